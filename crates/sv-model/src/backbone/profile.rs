//! Where the CPU and LibTorch forwards spend their time, by stage, when the forward config says
//! `profile = true` (or `SV_PROFILE=1` at a binary's edge): wall time summed over every forward of the process ([`report`] prints
//! it). Off, a lap is one branch. The LibTorch forward waits for its device before each lap, so
//! its stages are device time too (and the forward is slower while profiling).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static TOTALS: Mutex<Vec<(&'static str, f64, u64)>> = Mutex::new(Vec::new());
/// The last tiling of each layer, as text.
static PLANS: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());

static ON: AtomicBool = AtomicBool::new(false);

fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Turn stage timing on for the rest of the process (a forward config's `profile = true`).
pub(crate) fn enable() {
    ON.store(true, Ordering::Relaxed);
}

/// The clock of one forward pass.
pub(crate) struct Laps(Option<Instant>);

impl Laps {
    pub fn start() -> Self {
        Self(enabled().then(Instant::now))
    }

    /// Whether profiling is on.
    #[cfg(feature = "tch")]
    pub fn on(&self) -> bool {
        self.0.is_some()
    }

    /// Notes how a layer's GEMM was tiled (shown by [`report`]).
    pub fn plan(&self, layer: &'static str, plan: impl FnOnce() -> String) {
        if self.0.is_none() {
            return;
        }
        let mut plans = PLANS.lock().unwrap_or_else(|e| e.into_inner());
        let text = plan();
        match plans.iter_mut().find(|(l, _)| *l == layer) {
            Some(p) => p.1 = text,
            None => plans.push((layer, text)),
        }
    }

    /// Adds the time since the last lap to `stage`.
    pub fn lap(&mut self, stage: &'static str) {
        let Some(last) = self.0 else { return };
        let now = Instant::now();
        let secs = (now - last).as_secs_f64();
        let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
        match totals.iter_mut().find(|(s, ..)| *s == stage) {
            Some(t) => {
                t.1 += secs;
                t.2 += 1;
            }
            None => totals.push((stage, secs, 1)),
        }
        self.0 = Some(Instant::now());
    }
}

/// The stage table (seconds, share of the total, laps) since the last report, when profiling is
/// on and something ran.
pub fn report() -> Option<String> {
    let totals = std::mem::take(&mut *TOTALS.lock().unwrap_or_else(|e| e.into_inner()));
    if totals.is_empty() {
        return None;
    }
    let all: f64 = totals.iter().map(|t| t.1).sum();
    let mut out = String::from("| stage | seconds | share | laps |\n|---|---|---|---|\n");
    for (stage, secs, laps) in totals.iter() {
        out += &format!("| {stage} | {secs:.4} | {:.1}% | {laps} |\n", 100.0 * secs / all);
    }
    for (layer, plan) in std::mem::take(&mut *PLANS.lock().unwrap_or_else(|e| e.into_inner())) {
        out += &format!("{layer}: {plan}\n");
    }
    Some(out)
}
