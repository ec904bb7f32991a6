"""Generate the Grafana dashboards of spendwatch (JSON, committed beside this script).

    .venv/bin/python dashboards/generate.py           # rewrite dashboards/*.json
    .venv/bin/python dashboards/generate.py --check   # exit 1 if a committed file differs

Built with grafana-foundation-sdk (pinned ==0.0.21). Every panel queries the Prometheus datasource whose
uid is `prometheus` (deploy/grafana/provisioning/datasources/prometheus.yml provisions it). Tests
regenerate the files and compare, validate them against Grafana's dashboard JSON Schema, and run every
panel's query against a real Prometheus scraping a running daemon.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions
from grafana_foundation_sdk.builders.dashboard import Dashboard, QueryVariable, Row
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import DataSourceRef
from grafana_foundation_sdk.models.dashboard import VariableRefresh, VariableSort

HERE = Path(__file__).resolve().parent
DS = DataSourceRef(type_val="prometheus", uid="prometheus")


def q(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    b = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    return b.legend_format(legend) if legend else b


def ts(title: str, unit: str, *queries: prometheus.Dataquery, w: int = 12, h: int = 8,
       desc: str = "") -> timeseries.Panel:
    p = timeseries.Panel().title(title).unit(unit).datasource(DS).span(w).height(h).min(0)
    if desc:
        p = p.description(desc)
    for x in queries:
        p = p.with_target(x)
    return p


def st(title: str, unit: str, query: prometheus.Dataquery, w: int = 6, h: int = 4, desc: str = "") -> stat.Panel:
    p = (stat.Panel().title(title).unit(unit).datasource(DS).span(w).height(h).with_target(query)
         .reduce_options(ReduceDataOptions().calcs(["lastNotNull"])))
    return p.description(desc) if desc else p


def base(title: str, uid: str, desc: str) -> Dashboard:
    return (Dashboard(title).uid(uid).description(desc).tags(["spendwatch", "x402"])
            .refresh("10s").time("now-1h", "now").timezone("utc").editable())


def net_spend(by: str = "") -> str:
    """Spend counted minus spend un-counted (USDC/s): a payment counted, un-counted by a reorg and counted
    again is in spendwatch_spend_usdc_total twice (the reversal in spendwatch_spend_reversed_usdc_total)."""
    agg = f"sum by ({by}) " if by else "sum"
    return (f"{agg}(rate(spendwatch_spend_usdc_total[$__rate_interval])) - "
            f"{agg}(rate(spendwatch_spend_reversed_usdc_total[$__rate_interval]))")


# -- the dashboards --------------------------------------------------------------------------------------
def fleet() -> Dashboard:
    return (
        base("spendwatch / fleet spend", "spendwatch-fleet",
             "Live spend of the whole agent fleet over x402 (USDC), by category, network and merchant.")
        .with_row(Row("Now"))
        .with_panel(st("Fleet spend rate", "currencyUSD", q(net_spend()),
                       desc="USDC per second, net of reorgs and corrections (counted minus un-counted)"))
        .with_panel(st("Payments / s", "reqps", q("sum(rate(spendwatch_payments_total[$__rate_interval]))")))
        .with_panel(st("Agents frozen", "short", q('sum(spendwatch_breakers{state="open"})')))
        .with_panel(st("Escalations waiting", "short", q("sum(spendwatch_escalations_waiting)")))
        .with_row(Row("Spend"))
        .with_panel(ts("Spend by category (USDC/s)", "currencyUSD", q(net_spend("category"), "{{category}}")))
        .with_panel(ts("Spend by network (USDC/s)", "currencyUSD", q(net_spend("network"), "{{network}}")))
        .with_panel(ts("Top merchants (USDC/s)", "currencyUSD",
                       q("topk(10, sum by (merchant) (rate(spendwatch_merchant_spend_usdc_total[$__rate_interval])))",
                         "{{merchant}}")))
        .with_panel(ts("Top agents by spend rate (1m window, USDC/s)", "currencyUSD",
                       q('topk(10, max by (agent) (spendwatch_agent_spend_rate_usdc_per_second{window="1m"}))',
                         "{{agent}}"), desc="The watcher exports only its top-N agents plus frozen/escalated ones"))
        .with_panel(ts("Reversed spend (reorgs, corrections) (USDC/s)", "currencyUSD",
                       q("sum by (category) (rate(spendwatch_spend_reversed_usdc_total[$__rate_interval]))",
                         "{{category}}")))
        .with_panel(ts("Findings / min", "short",
                       q("sum by (kind) (rate(spendwatch_findings_total[$__rate_interval])) * 60", "{{kind}}")))
        .with_row(Row("Decisions"))
        .with_panel(ts("Decisions / min by kind", "short",
                       q("sum by (kind) (rate(spendwatch_decisions_total[$__rate_interval])) * 60", "{{kind}}")))
        .with_panel(ts("Decisions / min by rule", "short",
                       q("sum by (rule) (rate(spendwatch_decisions_total[$__rate_interval])) * 60", "{{rule}}")))
        .with_panel(ts("Breakers by state", "short", q("sum by (state) (spendwatch_breakers)", "{{state}}")))
        .with_panel(ts("Anomaly score p99 by model", "short",
                       q("histogram_quantile(0.99, sum by (model, le) (rate(spendwatch_anomaly_score_bucket[$__rate_interval])))",
                         "{{model}}")))
    )


def agent() -> Dashboard:
    sel = 'agent="$agent"'
    return (
        base("spendwatch / agent", "spendwatch-agent",
             "One agent's spend, breaker and escalations. Agents are listed while they rank in the watcher's "
             "top N or have an open breaker or a waiting escalation.")
        .with_variable(QueryVariable("agent").label("Agent wallet").datasource(DS)
                       .query("label_values(spendwatch_agent_spend_rate_usdc_per_second, agent)")
                       .definition("label_values(spendwatch_agent_spend_rate_usdc_per_second, agent)")
                       .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC))
        .with_row(Row("Now"))
        .with_panel(st("Spend rate, 1m window", "currencyUSD",
                       q(f'max(spendwatch_agent_spend_rate_usdc_per_second{{{sel},window="1m"}})')))
        .with_panel(st("Spent in the last 24h window", "currencyUSD",
                       q(f'max(spendwatch_agent_spend_rate_usdc_per_second{{{sel},window="24h"}}) * 86400')))
        .with_panel(st("Payments in the 1h window", "short",
                       q(f'max(spendwatch_agent_window_payments{{{sel},window="1h"}})')))
        .with_panel(st("Breaker", "short",
                       q(f'max(spendwatch_agent_breaker_state{{{sel}}}) or on() vector(0)'),
                       desc="1 = open, half-open or held; 0 = closed"))
        .with_row(Row("Spend"))
        .with_panel(ts("Spend rate by window (USDC/s)", "currencyUSD",
                       q(f"max by (window) (spendwatch_agent_spend_rate_usdc_per_second{{{sel}}})", "{{window}}"),
                       w=24))
        .with_panel(ts("Payments in window", "short",
                       q(f"max by (window) (spendwatch_agent_window_payments{{{sel}}})", "{{window}}")))
        .with_panel(ts("Breaker and escalation", "short",
                       q(f"max by (state) (spendwatch_agent_breaker_state{{{sel}}}) or on() vector(0)", "breaker {{state}}"),
                       q(f"count(spendwatch_agent_escalation_waiting_since_timestamp_seconds{{{sel}}}) or on() vector(0)",
                         "escalation waiting", "B")))
    )


def health() -> Dashboard:
    return (
        base("spendwatch / watcher health", "spendwatch-health",
             "The watcher's own health: intake, lag, latency, dead letters, webhooks, chain bridge, facilitator tap.")
        .with_row(Row("Intake"))
        .with_panel(st("Watchers up", "short", q('sum(up{job="spendwatch"})')))
        .with_panel(st("Tracked agents", "short", q("sum(spendwatch_tracked_agents)")))
        .with_panel(st("Partitions owned", "short", q("sum(spendwatch_partitions_owned)")))
        .with_panel(st("Max consumer lag", "short", q("max(spendwatch_consumer_lag_records)")))
        .with_panel(ts("Events / s by source", "reqps",
                       q("sum by (source) (rate(spendwatch_events_total[$__rate_interval]))", "{{source}}")))
        .with_panel(ts("Consumer lag by partition (records)", "short",
                       q("sum by (topic, partition) (spendwatch_consumer_lag_records)", "{{topic}}[{{partition}}]")))
        .with_panel(ts("Processing latency (event time to processed)", "s",
                       q("histogram_quantile(0.5, sum by (le) (rate(spendwatch_event_latency_seconds_bucket[$__rate_interval])))", "p50"),
                       q("histogram_quantile(0.99, sum by (le) (rate(spendwatch_event_latency_seconds_bucket[$__rate_interval])))", "p99", "B")))
        .with_panel(ts("Dead letters / s by reason", "short",
                       q("sum by (reason) (rate(spendwatch_dead_letters_total[$__rate_interval]))", "{{reason}}")))
        .with_panel(ts("Duplicates dropped / s", "short",
                       q("sum(rate(spendwatch_duplicates_total[$__rate_interval]))", "duplicates")))
        .with_panel(ts("Checkpoints / min", "short",
                       q("sum(rate(spendwatch_checkpoints_total[$__rate_interval])) * 60", "checkpoints")))
        .with_row(Row("Breaker webhooks"))
        .with_panel(ts("Webhooks / s by outcome", "short",
                       q("sum by (outcome) (rate(spendwatch_webhooks_total[$__rate_interval]))", "{{outcome}}")))
        .with_panel(ts("Webhook latency", "s",
                       q("histogram_quantile(0.99, sum by (le) (rate(spendwatch_webhook_duration_seconds_bucket[$__rate_interval])))", "p99")))
        .with_row(Row("Chain bridge"))
        .with_panel(ts("Chain head lag (blocks)", "short", q("max(spendwatch_chain_head_lag_blocks)", "lag")))
        .with_panel(ts("Reorgs (total) and deepest", "short",
                       q("sum(spendwatch_chain_reorgs_total)", "reorgs"),
                       q("histogram_quantile(1, sum by (le) (spendwatch_chain_reorg_depth_blocks_bucket))", "deepest", "B")))
        .with_row(Row("Facilitator tap"))
        .with_panel(ts("Tap breaker view stale", "short",
                       q("max by (instance) (spendwatch_tap_breaker_view_stale)", "{{instance}}"), w=8,
                       desc="1 = the tap cannot tell which agents are frozen: it lets them pay (--fail open) "
                            "or refuses everyone (--fail closed)"))
        .with_panel(ts("Tap records / s by outcome", "short",
                       q("sum by (outcome) (rate(spendwatch_tap_records_total[$__rate_interval]))", "{{outcome}}"),
                       w=8, desc="dropped and unrecordable records are payments the watcher never sees"))
        .with_panel(ts("Tap records waiting for Kafka", "short",
                       q("max by (instance) (spendwatch_tap_buffer_records)", "{{instance}}"), w=8))
        .with_panel(ts("Tap answers / s by call and status", "reqps",
                       q("sum by (call, status) (rate(spendwatch_tap_requests_total[$__rate_interval]))",
                         "{{call}} {{status}}"),
                       desc="5xx over 5% of a call's answers for 5 minutes: TapUpstreamErrors"))
        .with_panel(ts("Tap upstream latency p99 by call", "s",
                       q("histogram_quantile(0.99, sum by (call, le) "
                         "(rate(spendwatch_tap_upstream_seconds_bucket[$__rate_interval])))", "{{call}}"),
                       desc="over 10 s for 10 minutes: TapUpstreamSlow"))
        .with_row(Row("Metrics"))
        .with_panel(ts("Per-agent series refresh (s)", "s", q("max(spendwatch_metrics_refresh_seconds)", "refresh")))
        .with_panel(ts("Agents with series", "short", q("sum(spendwatch_agents_ranked)", "agents")))
    )


DASHBOARDS = {"fleet.json": fleet, "agent.json": agent, "health.json": health}


def render(name: str) -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(DASHBOARDS[name]().build()) + "\n"


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) of every panel target in the committed JSON."""
    out = []
    for name in DASHBOARDS:
        doc = json.loads((HERE / name).read_text())
        for panel in doc.get("panels", []):
            for t in panel.get("targets", []):
                out.append((name, panel.get("title", ""), t["expr"]))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    stale = []
    for name in DASHBOARDS:
        text = render(name)
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run dashboards/generate.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
