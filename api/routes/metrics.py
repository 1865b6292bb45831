"""Prometheus metrics: jobs by status, queue depth, job durations, HTTP latency by route."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPBearer
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session

from api.deps import SessionDep, SettingsDep
from api.longpoll import LISTENERS
from api.safety import require_metrics_key
from api.schemas import Problem
from core.db import QUERIES
from core.services import metrics as metric_queries

router = APIRouter(tags=["operations"])
metrics_scheme = HTTPBearer(
    auto_error=False, scheme_name="MetricsKey", description="SOFTLABEL_METRICS_KEY"
)
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class JobStatsCollector(Collector):
    """Job gauges and the duration histogram, computed from Postgres at scrape time.

    The database is the source of truth, so every API replica reports the same numbers
    and nothing is lost when a process restarts.
    """

    def __init__(self, session: Session) -> None:
        self.session = session

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families."""
        counts = metric_queries.job_counts(self.session)
        jobs = GaugeMetricFamily("softlabel_jobs", "Jobs by status", labels=["status"])
        for job_status, n in counts.items():
            jobs.add_metric([job_status], n)
        yield jobs
        depth = GaugeMetricFamily(
            "softlabel_queue_depth", "Jobs waiting for a worker", labels=["queue"]
        )
        depth.add_metric(["training"], counts["queued"])
        yield depth
        running = GaugeMetricFamily("softlabel_jobs_running", "Jobs being trained now")
        running.add_metric([], counts["running"])
        yield running

        hist = HistogramMetricFamily(
            "softlabel_job_duration_seconds",
            "Wall time from start to end of finished jobs",
            labels=["status"],
        )
        for row in metric_queries.duration_histogram(self.session, buckets=DURATION_BUCKETS):
            pairs = zip(DURATION_BUCKETS, row.buckets, strict=True)
            buckets = [(repr(b), c) for b, c in pairs]
            buckets.append(("+Inf", row.count))
            hist.add_metric([row.status], buckets, row.total_s)
        yield hist


class ProcessCollector(Collector):
    """This API process's own figures: database statements, long polls, the ETag cache."""

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families."""
        listeners = list(LISTENERS)
        yield CounterMetricFamily(
            "softlabel_db_queries", "SQL statements this process sent to the database",
            value=QUERIES.value,
        )
        yield GaugeMetricFamily(
            "softlabel_long_polls_waiting", "Long polls (?wait=) of this process waiting now",
            value=sum(x.waiting for x in listeners),
        )
        yield GaugeMetricFamily(
            "softlabel_listen_connected", "1 while this process's LISTEN connection is up",
            value=float(any(x.live for x in listeners)),
        )
        yield CounterMetricFamily(
            "softlabel_listen_connects", "Times this process's LISTEN connection was opened",
            value=sum(x.connects for x in listeners),
        )
        yield CounterMetricFamily(
            "softlabel_listen_notifications", "Change notifications this process received",
            value=sum(x.notifications for x in listeners),
        )
        yield CounterMetricFamily(
            "softlabel_etag_cache_hits", "Conditional reads answered from the ETag cache",
            value=sum(x.cache.hits for x in listeners),
        )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {
                "text/plain": {
                    "schema": {"type": "string"},
                    "example": 'softlabel_jobs{status="queued"} 3.0\n',
                }
            },
        },
        401: {"model": Problem, "description": "No or a wrong metrics key"},
    },
    dependencies=[Depends(metrics_scheme)],
)
def metrics(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """Prometheus metrics, service-wide (no per-tenant figures); needs the metrics key."""
    require_metrics_key(request, settings)
    return Response(content=exposition(session), media_type=PROMETHEUS_TEXT)


def exposition(session: Session) -> bytes:
    """The metrics text: process-wide series plus the job figures from the database."""
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(ProcessCollector())
    scrape.register(JobStatsCollector(session))
    return bytes(generate_latest(REGISTRY) + generate_latest(scrape))
