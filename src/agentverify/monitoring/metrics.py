"""The agent's metric names (``monitoring.metrics``) and the PromQL built from them.

Every query agentverify makes about the agent — the dashboard panels, the alert rules,
the token / cache / cost cross-checks of ``load`` — is built here from one mapping, so
an agent that exports ``support_agent_requests_total{route}`` instead of
``requests_total{type}`` is checked the same way. Defaults are the reference agent's
names (the seed's dashboard):

============  =========================================================================
``requests``  counter of requests (``selector`` keeps only the chat route; ``label``
              groups the dashboard panel): ``requests_total`` by ``type``
``latency``   histogram of the time to answer, named without ``_bucket``:
              ``request_latency_seconds``
``errors``    counter of failed requests, ``label`` carrying the error kind; ``exclude``
              drops kinds that are not failures of the agent (e.g. ``rate_limited``):
              ``requests_error_total`` by ``error``
``tokens``    counter of LLM tokens by ``model_label`` and ``kind_label``; ``compare:
              kind`` checks prompt / completion / embedding against the LLM ledger
              one by one, ``total`` only their sum (for an agent with other kinds):
              ``token_usage_total`` by ``model``, ``kind``
``cache``     counter of cache lookups, ``label`` = ``hit`` / ``miss`` values:
              ``cache_requests_total`` by ``result``
``cost``      counter of dollars by ``model_label``: ``llm_cost_usd_total``
============  =========================================================================

An entry set to ``null`` says the agent does not export it: every check that needs it
is reported *inconclusive* with that reason (never passed). :func:`not_exported` also
finds a named series missing from a replica's own ``/metrics``, which is inconclusive
for the same reason.

Example:
    >>> m = MetricsMapping()
    >>> m.requests_rate("5m", by_label=True)
    'sum by (type) (rate(requests_total[5m]))'
    >>> MetricsMapping(errors={"name": "failures_total", "label": "reason",
    ...                        "exclude": ["rate_limited"]}).errors_rate("1m")
    'sum(rate(failures_total{reason!="rate_limited"}[1m]))'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from agentverify.seed import Section

__all__ = ["CacheMetric", "CostMetric", "ErrorsMetric", "LatencyMetric", "MetricsMapping",
           "RequestsMetric", "TokensMetric", "exported_names", "not_exported", "replica_exports",
           "selector"]

_METRIC = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"
_LABEL = r"^[a-zA-Z_][a-zA-Z0-9_]*$"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def selector(equal: Mapping[str, str], not_equal: Iterable[tuple[str, str]] = ()) -> str:
    """A PromQL label selector (``{a="x",b!="y"}``), or ``""`` when there is nothing.

    Example:
        >>> selector({"route": "/v1/ask"}, [("reason", "rate_limited")])
        '{route="/v1/ask",reason!="rate_limited"}'
    """
    parts = [f'{k}="{_escape(v)}"' for k, v in equal.items()]
    parts += [f'{k}!="{_escape(v)}"' for k, v in not_equal]
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric(Section):
    name: str = Field(..., pattern=_METRIC)
    selector: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _label_names(self) -> _Metric:
        import re

        for key in self.selector:
            if not re.match(_LABEL, key):
                raise ValueError(f"selector: {key!r} is not a Prometheus label name")
        return self

    def series(self, *, suffix: str = "", exclude: Iterable[tuple[str, str]] = ()) -> str:
        return self.name + suffix + selector(self.selector, exclude)


class RequestsMetric(_Metric):
    """A counter of requests answered (``monitoring.metrics.requests``)."""

    name: str = Field("requests_total", pattern=_METRIC)
    label: str | None = Field("type", pattern=_LABEL)


class LatencyMetric(_Metric):
    """A histogram of seconds to answer, named without ``_bucket``."""

    name: str = Field("request_latency_seconds", pattern=_METRIC)


class ErrorsMetric(_Metric):
    """A counter of failed requests; ``label`` carries the kind, ``exclude`` drops kinds."""

    name: str = Field("requests_error_total", pattern=_METRIC)
    label: str | None = Field("error", pattern=_LABEL)
    exclude: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _exclude_needs_label(self) -> ErrorsMetric:
        if self.exclude and not self.label:
            raise ValueError("exclude needs label: the label whose values are excluded")
        return self


class TokensMetric(_Metric):
    """A counter of LLM tokens by model and kind."""

    name: str = Field("token_usage_total", pattern=_METRIC)
    model_label: str | None = Field("model", pattern=_LABEL)
    kind_label: str | None = Field("kind", pattern=_LABEL)
    compare: Literal["kind", "total"] = "kind"

    @model_validator(mode="after")
    def _kind_needs_label(self) -> TokensMetric:
        if self.compare == "kind" and not self.kind_label:
            raise ValueError("compare: kind needs kind_label (or compare: total)")
        return self


class CacheMetric(_Metric):
    """A counter of cache lookups whose ``label`` is ``hit`` or ``miss``."""

    name: str = Field("cache_requests_total", pattern=_METRIC)
    label: str = Field("result", pattern=_LABEL)
    hit: str = "hit"
    miss: str = "miss"


class CostMetric(_Metric):
    """A counter of LLM dollars by model."""

    name: str = Field("llm_cost_usd_total", pattern=_METRIC)
    model_label: str | None = Field("model", pattern=_LABEL)


class MetricsMapping(Section):
    """``monitoring.metrics``: the agent's series for each thing agentverify checks."""

    requests: RequestsMetric | None = Field(default_factory=RequestsMetric)
    latency: LatencyMetric | None = Field(default_factory=LatencyMetric)
    errors: ErrorsMetric | None = Field(default_factory=ErrorsMetric)
    tokens: TokensMetric | None = Field(default_factory=TokensMetric)
    cache: CacheMetric | None = Field(default_factory=CacheMetric)
    cost: CostMetric | None = Field(default_factory=CostMetric)

    # ------------------------------------------------------------------ PromQL

    def missing(self, key: str) -> str | None:
        """Why ``key`` cannot be queried (None: it is mapped)."""
        if getattr(self, key) is None:
            return f"monitoring.metrics.{key} is null: the agent exports no {key} metric"
        return None

    def requests_rate(self, window: str, *, by_label: bool = False) -> str:
        req = _need(self.requests, "requests")
        inner = f"rate({req.series()}[{window}])"
        return f"sum by ({req.label}) ({inner})" if by_label and req.label else f"sum({inner})"

    def errors_rate(self, window: str, *, by_label: bool = False) -> str:
        err = _need(self.errors, "errors")
        excluded = [(err.label, value) for value in err.exclude] if err.label else []
        inner = f"rate({err.series(exclude=excluded)}[{window}])"
        return f"sum by ({err.label}) ({inner})" if by_label and err.label else f"sum({inner})"

    def latency_p95(self, window: str) -> str:
        lat = _need(self.latency, "latency")
        return (f"histogram_quantile(0.95, sum by (le) "
                f"(rate({lat.series(suffix='_bucket')}[{window}])))")

    def tokens_rate(self, window: str) -> str:
        tok = _need(self.tokens, "tokens")
        labels = [x for x in (tok.model_label, tok.kind_label) if x]
        inner = f"rate({tok.series()}[{window}])"
        return f"sum by ({', '.join(labels)}) ({inner})" if labels else f"sum({inner})"

    def series_names(self) -> dict[str, str]:
        """Mapping key -> the sample name a replica's ``/metrics`` must carry."""
        out: dict[str, str] = {}
        for key in MetricsMapping.model_fields:
            entry = getattr(self, key)
            if entry is not None:
                out[key] = entry.name + ("_bucket" if key == "latency" else "")
        return out


def _need(entry: Any, key: str) -> Any:
    if entry is None:
        raise ValueError(f"monitoring.metrics.{key} is null: nothing to query")
    return entry


def exported_names(exposition: str) -> set[str]:
    """Every sample name in a Prometheus text exposition (``x_total``, ``y_bucket`` ...).

    Example:
        >>> sorted(exported_names("# TYPE a counter\\na_total 1\\nb_bucket{le=\\"1\\"} 2\\n"))
        ['a_total', 'b_bucket']
    """
    from prometheus_client.parser import text_string_to_metric_families

    names: set[str] = set()
    try:
        for family in text_string_to_metric_families(exposition):
            names.update(sample.name for sample in family.samples)
    except ValueError:
        # a line the parser cannot read: fall back to the sample names at line starts
        for line in exposition.splitlines():
            if line and not line.startswith("#"):
                names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


def not_exported(mapping: MetricsMapping, key: str, exported: set[str] | None,
                 where: str = "the agent's /metrics") -> str | None:
    """Why the check needing ``key`` is inconclusive, or None when it can be made.

    ``exported`` is :func:`exported_names` of one replica (None: not read, so only a
    null mapping makes it inconclusive).
    """
    missing = mapping.missing(key)
    if missing is not None:
        return missing
    name = mapping.series_names()[key]
    if exported is not None and name not in exported:
        return (f"{where} has no {name} (monitoring.metrics.{key}.name); map it to the "
                f"agent's series or set monitoring.metrics.{key}: null")
    return None


def replica_exports(stack: Any, metrics_path: str | None) -> tuple[set[str] | None, str]:
    """The sample names the first replica exports at ``metrics_path``, and where that is
    (for messages); ``(None, reason)`` when there is nothing to read.

    Every replica runs the same code, so one replica's exposition says what the agent
    exports (a replica that cannot be read leaves the judgement to Prometheus).
    """
    import httpx

    from agentverify import _http

    replicas = stack.replicas
    if metrics_path is None or not replicas:
        return None, "stack.agent.contract.metrics_path is null"
    replica = replicas[0]
    where = f"{replica.instance}'s {metrics_path}"
    try:
        resp = _http.client().get(replica.url + metrics_path, timeout=5.0)
    except httpx.HTTPError:
        return None, where
    if resp.status_code != 200:
        return None, where
    return exported_names(resp.text), where
