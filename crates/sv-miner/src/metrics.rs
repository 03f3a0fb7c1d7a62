//! Prometheus metrics of the miner (`GET /metrics`).

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::listen::ConnCounters;
use crate::predlog::LogCounters;

/// The metagraph's metrics (`/metrics`).
#[derive(Clone)]
pub struct MetagraphCounters {
    /// Syncs by result (`ok`, `failed`).
    pub syncs: IntCounterVec,
    /// Block of the metagraph in force (0: none yet).
    pub block: IntGauge,
    /// Neurons and validator-permit holders in it.
    pub neurons: IntGauge,
    pub validators: IntGauge,
    /// Seconds since it was synced (set at each scrape; -1: never).
    pub age_seconds: IntGauge,
}

/// The miner's metrics.
pub struct Metrics {
    pub registry: Registry,
    /// Requests by route and HTTP status.
    pub requests: IntCounterVec,
    /// End-to-end latency by route.
    pub latency: HistogramVec,
    /// Latency by cascade stage.
    pub stage_latency: HistogramVec,
    /// Stage 1's parts: decode (slot wait included), queue wait, the batch's forward.
    pub stage1_parts: HistogramVec,
    /// Stage-1 batch sizes.
    pub batch_size: Histogram,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    /// Errors by kind (bad_base64, too_large, bad_signature, ...).
    pub errors: IntCounterVec,
    /// The prediction log: records written and dropped, write failures, the last commit.
    pub predlog: LogCounters,
    /// Open connections, and connections the server closed by reason.
    pub connections: ConnCounters,
    /// The serving model: `sv_model_info{version}` 1, its age and days left of its 90.
    pub model_info: IntGaugeVec,
    pub model_age_days: Gauge,
    pub model_days_left: Gauge,
    /// Reloads by result (`ok`, `failed`).
    pub reloads: IntCounterVec,
    /// Axon requests by validator (allowed hotkeys by name, the rest as `other`) and status.
    pub validator_requests: IntCounterVec,
    /// Answers by the stages that made them (`stage1`, `stage1+vlm`, ...).
    pub exits: IntCounterVec,
    /// Confidence `max(p, 1 − p)` of answers.
    pub confidence: Histogram,
    /// The serving model's stage 1 since it was loaded: failed batches, and times its thread
    /// stopped and was loaded again.
    pub stage1_failed_batches: IntGauge,
    pub stage1_restarts: IntGauge,
    /// The shadow model's comparison (`--shadow`).
    pub shadow: crate::shadow::ShadowCounters,
    /// The synced metagraph (`[chain]`).
    pub metagraph: MetagraphCounters,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let lat_buckets = vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 9.0];
        let requests =
            IntCounterVec::new(Opts::new("sv_requests_total", "Requests by route and status"), &["route", "status"])
                .unwrap();
        let latency = HistogramVec::new(
            HistogramOpts::new("sv_request_latency_seconds", "Request latency by route").buckets(lat_buckets.clone()),
            &["route"],
        )
        .unwrap();
        let stage_latency = HistogramVec::new(
            HistogramOpts::new("sv_stage_latency_seconds", "Latency by cascade stage").buckets(lat_buckets),
            &["stage"],
        )
        .unwrap();
        let stage1_parts = HistogramVec::new(
            HistogramOpts::new("sv_stage1_part_seconds", "Stage 1's time by part: decode, queue, forward")
                .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
            &["part"],
        )
        .unwrap();
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("sv_batch_size", "Images per stage-1 forward pass")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )
        .unwrap();
        let cache_hits = IntCounter::new("sv_cache_hits_total", "Answers served from the content cache").unwrap();
        let cache_misses = IntCounter::new("sv_cache_misses_total", "Answers computed").unwrap();
        let errors = IntCounterVec::new(Opts::new("sv_errors_total", "Errors by kind"), &["kind"]).unwrap();
        let predlog = LogCounters {
            dropped: IntCounterVec::new(
                Opts::new("sv_predlog_dropped_total", "Prediction-log records dropped, by reason"),
                &["reason"],
            )
            .unwrap(),
            images_left_out: IntCounterVec::new(
                Opts::new("sv_predlog_images_left_out_total", "Logged images left out of their record, by reason"),
                &["reason"],
            )
            .unwrap(),
            records_written: IntCounter::new("sv_predlog_records_total", "Prediction-log records written").unwrap(),
            write_failures: IntCounter::new("sv_predlog_write_failures_total", "Prediction-log write failures")
                .unwrap(),
            last_commit: IntGauge::new(
                "sv_predlog_last_commit_timestamp_seconds",
                "Unix time of the last prediction-log segment written",
            )
            .unwrap(),
            segments: IntGauge::new("sv_predlog_segments", "Prediction-log segments waiting for import").unwrap(),
            segment_bytes: IntGauge::new("sv_predlog_segment_bytes", "Bytes of the segments waiting for import")
                .unwrap(),
        };
        let open = IntGauge::new("sv_connections_open", "Open client connections").unwrap();
        let closed = IntCounterVec::new(
            Opts::new("sv_connections_closed_total", "Connections the server closed, by reason"),
            &["reason"],
        )
        .unwrap();
        let model_info =
            IntGaugeVec::new(Opts::new("sv_model_info", "The serving model's version (value 1)"), &["version"])
                .unwrap();
        let model_age_days = Gauge::new("sv_model_age_days", "Days since the serving model was submitted").unwrap();
        let model_days_left = Gauge::new("sv_model_days_left", "Days left of the serving model's 90-day life").unwrap();
        let reloads =
            IntCounterVec::new(Opts::new("sv_model_reloads_total", "Model reloads by result"), &["result"]).unwrap();
        let validator_requests = IntCounterVec::new(
            Opts::new(
                "sv_validator_requests_total",
                "Axon requests by validator hotkey (allowed ones; others as other) and status",
            ),
            &["hotkey", "status"],
        )
        .unwrap();
        let exits =
            IntCounterVec::new(Opts::new("sv_stage_exits_total", "Answers by the stages that made them"), &["stages"])
                .unwrap();
        let confidence = Histogram::with_opts(
            HistogramOpts::new("sv_answer_confidence", "Confidence max(p, 1 - p) of answers")
                .buckets(vec![0.55, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]),
        )
        .unwrap();
        let stage1_failed_batches =
            IntGauge::new("sv_stage1_failed_batches", "Stage-1 batches that failed since the serving model was loaded")
                .unwrap();
        let stage1_restarts = IntGauge::new(
            "sv_stage1_restarts",
            "Times the serving model's stage-1 thread stopped and was loaded again",
        )
        .unwrap();
        let shadow = crate::shadow::ShadowCounters {
            requests: IntCounterVec::new(
                Opts::new("sv_shadow_requests_total", "Requests picked for the shadow model, by result"),
                &["result"],
            )
            .unwrap(),
            decisions: IntCounterVec::new(
                Opts::new(
                    "sv_shadow_decisions_total",
                    "Shadow scores by whether their rounded decision agrees with the served one",
                ),
                &["agree"],
            )
            .unwrap(),
            abs_diff: Histogram::with_opts(
                HistogramOpts::new("sv_shadow_abs_diff", "|shadow score - served score|")
                    .buckets(vec![0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5]),
            )
            .unwrap(),
            info: IntGaugeVec::new(Opts::new("sv_shadow_info", "The shadow model's version (value 1)"), &["version"])
                .unwrap(),
        };
        let metagraph = MetagraphCounters {
            syncs: IntCounterVec::new(Opts::new("sv_metagraph_syncs_total", "Metagraph syncs by result"), &["result"])
                .unwrap(),
            block: IntGauge::new("sv_metagraph_block", "Block of the metagraph in force (0: none)").unwrap(),
            neurons: IntGauge::new("sv_metagraph_neurons", "Neurons in the metagraph in force").unwrap(),
            validators: IntGauge::new("sv_metagraph_validators", "Validator-permit holders in the metagraph in force")
                .unwrap(),
            age_seconds: IntGauge::new(
                "sv_metagraph_age_seconds",
                "Seconds since the metagraph in force was synced (-1: never)",
            )
            .unwrap(),
        };
        metagraph.age_seconds.set(-1);
        // Known label values start at 0, so that a rule or panel on them has a series from the
        // first scrape (Prometheus's advice for counters with labels).
        for (vec, values) in [
            (&closed, &["evicted_idle", "refused_busy", "lifetime", "shutdown", "accept_error"][..]),
            (&predlog.dropped, &["queue_full", "queue_bytes", "over_quota", "write_failed"][..]),
            (&predlog.images_left_out, &["too_large", "over_quota"][..]),
            (&reloads, &["ok", "failed"][..]),
            (&shadow.requests, &["scored", "busy", "failed"][..]),
            (&shadow.decisions, &["yes", "no"][..]),
            (&metagraph.syncs, &["ok", "failed"][..]),
        ] {
            for v in values {
                vec.with_label_values(&[v]);
            }
        }
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(validator_requests.clone()),
            Box::new(exits.clone()),
            Box::new(confidence.clone()),
            Box::new(stage1_failed_batches.clone()),
            Box::new(stage1_restarts.clone()),
            Box::new(shadow.requests.clone()),
            Box::new(shadow.decisions.clone()),
            Box::new(shadow.abs_diff.clone()),
            Box::new(shadow.info.clone()),
            Box::new(metagraph.syncs.clone()),
            Box::new(metagraph.block.clone()),
            Box::new(metagraph.neurons.clone()),
            Box::new(metagraph.validators.clone()),
            Box::new(metagraph.age_seconds.clone()),
            Box::new(model_info.clone()),
            Box::new(model_age_days.clone()),
            Box::new(model_days_left.clone()),
            Box::new(reloads.clone()),
            Box::new(latency.clone()),
            Box::new(stage_latency.clone()),
            Box::new(stage1_parts.clone()),
            Box::new(batch_size.clone()),
            Box::new(cache_hits.clone()),
            Box::new(cache_misses.clone()),
            Box::new(errors.clone()),
            Box::new(predlog.dropped.clone()),
            Box::new(predlog.images_left_out.clone()),
            Box::new(predlog.records_written.clone()),
            Box::new(predlog.write_failures.clone()),
            Box::new(predlog.last_commit.clone()),
            Box::new(predlog.segments.clone()),
            Box::new(predlog.segment_bytes.clone()),
            Box::new(open.clone()),
            Box::new(closed.clone()),
        ] {
            registry.register(c).unwrap();
        }
        Self {
            registry,
            requests,
            latency,
            stage_latency,
            stage1_parts,
            batch_size,
            cache_hits,
            cache_misses,
            errors,
            predlog,
            connections: ConnCounters { open, closed },
            model_info,
            model_age_days,
            model_days_left,
            reloads,
            validator_requests,
            exits,
            confidence,
            stage1_failed_batches,
            stage1_restarts,
            shadow,
            metagraph,
        }
    }

    /// Point the model gauges at `serving` (called before each scrape).
    pub fn set_model(&self, serving: &crate::serving::Serving) {
        self.model_info.reset();
        self.model_info.with_label_values(&[serving.cascade.version.as_str()]).set(1);
        self.stage1_failed_batches.set(serving.cascade.stage1_failures() as i64);
        self.stage1_restarts.set(serving.cascade.stage1_restarts() as i64);
        if let Some(f) = serving.freshness() {
            self.model_age_days.set(f.age_days);
            self.model_days_left.set(f.days_left);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).expect("utf8 metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
