//! The burn LSTM forecaster: one model shared by every series, trained with
//! pinball loss to give non-crossing multi-horizon quantiles.
//!
//! Design (see `docs/forecasting.md` for the why):
//! - **Inputs, per series normalised.** A window of `window` buckets divided
//!   by the window mean `s` (so vCPU and MiB series, big and small
//!   environments, look alike), plus calendar features (hour of day, day of
//!   week as sin/cos). The head also sees, per horizon step, the value one day
//!   earlier and the mean of the same time of day over up to a week, both as
//!   deltas to the last value in units of `s`, the last level and `ln s`.
//! - **Output.** Per horizon step, the anchor quantile (nearest 0.5) as a
//!   delta from the last value in units of `s`, and the other quantiles as
//!   cumulative softplus increments away from it: quantiles cannot cross.
//! - **Calibration.** After training, a held-out validation slice (the last
//!   `val_frac` of the training data) gives per (horizon, quantile) factors
//!   that stretch or shrink each quantile's distance from the anchor so that
//!   its empirical level matches the nominal one (split-conformal style).
//! - **Training** uses burn (autodiff, Adam) on the ndarray CPU backend, or
//!   wgpu with the `gpu` feature. **Inference** of one series runs the same
//!   arithmetic in plain Rust on the trained weights: a 48-step LSTM is a few
//!   hundred thousand multiply-adds, and burn's per-op dispatch would dominate
//!   the sub-millisecond budget. A test checks both paths agree.

use super::{
    check_quantiles, season_buckets, Ets, Forecast, ForecastError, Forecaster, History, DAY_MS,
};
use crate::events::Millis;
use burn::module::Param;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid, softplus, tanh};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Features per input time step: value, sin/cos hour of day, sin/cos day of week.
pub const STEP_FEATURES: usize = 5;
/// Checkpoint format marker and version.
pub const FORMAT: &str = "prescale-lstm";
pub const VERSION: u32 = 1;
/// Cap on validation origins used for calibration.
const MAX_VAL_ORIGINS: usize = 4000;

/// A validation origin with its normalised forecast: (series, origin,
/// quantiles `[horizon * Q]`, last value, scale).
type ValRow = (usize, usize, Vec<f32>, f64, f64);

/// Hyper-parameters and data shape of the LSTM. Stored in the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LstmConfig {
    /// Input window in buckets (default 48 = 4 h of 5-min buckets).
    pub window: usize,
    /// LSTM hidden size.
    pub hidden: usize,
    /// Hidden size of the output head.
    pub head_hidden: usize,
    /// Buckets ahead (default 12 = 1 h).
    pub horizon: usize,
    /// Quantile levels, ascending.
    pub quantiles: Vec<f64>,
    /// Bucket width the model was trained on; calendar features depend on it.
    pub bucket_ms: i64,
    /// Season in buckets for the seasonal head features (one day).
    pub season: usize,
    pub epochs: usize,
    pub steps_per_epoch: usize,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
    /// Fraction of each training series kept aside for interval calibration.
    pub val_frac: f64,
    /// Training targets (deltas in units of the window mean) are clipped to
    /// ±this, so a burst after an idle window does not dominate the loss.
    pub target_clip: f64,
}

impl Default for LstmConfig {
    fn default() -> Self {
        Self {
            window: 48,
            hidden: 32,
            head_hidden: 64,
            horizon: 12,
            quantiles: vec![0.1, 0.5, 0.9],
            bucket_ms: 300_000,
            season: 288,
            epochs: 6,
            steps_per_epoch: 100,
            batch: 64,
            lr: 3e-3,
            seed: 42,
            val_frac: 0.2,
            target_clip: 20.0,
        }
    }
}

impl LstmConfig {
    /// Config for a bucket width: season follows (one day of buckets).
    pub fn for_bucket(bucket_ms: i64) -> Self {
        Self {
            bucket_ms,
            season: season_buckets(bucket_ms),
            ..Self::default()
        }
    }

    fn extra(&self) -> usize {
        2 * self.horizon + 2
    }

    fn nq(&self) -> usize {
        self.quantiles.len()
    }

    /// Index of the anchor quantile (closest to the median).
    fn anchor(&self) -> usize {
        let mut best = 0;
        for (i, q) in self.quantiles.iter().enumerate() {
            if (q - 0.5).abs() < (self.quantiles[best] - 0.5).abs() {
                best = i;
            }
        }
        best
    }

    fn validate(&self) -> Result<(), String> {
        check_quantiles(&self.quantiles).map_err(|e| e.to_string())?;
        if self.window < 2 || self.hidden == 0 || self.head_hidden == 0 || self.horizon == 0 {
            return Err("window >= 2, hidden, head_hidden and horizon > 0 required".into());
        }
        if self.bucket_ms <= 0 || self.season == 0 {
            return Err("bucket_ms and season must be positive".into());
        }
        let dims = [
            ("window", self.window),
            ("hidden", self.hidden),
            ("head_hidden", self.head_hidden),
            ("horizon", self.horizon),
            ("season", self.season),
        ];
        for (name, v) in dims {
            if v > crate::limits::MAX_LSTM_DIM {
                return Err(format!(
                    "{name} {v} is above the limit of {}",
                    crate::limits::MAX_LSTM_DIM
                ));
            }
        }
        Ok(())
    }
}

/// Trained weights, row-major `[in, out]` matrices as burn's `x @ W` uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Weights {
    pub wx: Vec<f32>,
    pub wh: Vec<f32>,
    pub b: Vec<f32>,
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
}

impl Weights {
    fn shapes(cfg: &LstmConfig) -> [(&'static str, usize, usize); 7] {
        let h4 = 4 * cfg.hidden;
        let hin = cfg.hidden + cfg.extra();
        let out = cfg.horizon * cfg.nq();
        [
            ("wx", STEP_FEATURES, h4),
            ("wh", cfg.hidden, h4),
            ("b", 1, h4),
            ("w1", hin, cfg.head_hidden),
            ("b1", 1, cfg.head_hidden),
            ("w2", cfg.head_hidden, out),
            ("b2", 1, out),
        ]
    }

    fn parts(&self) -> [&Vec<f32>; 7] {
        [
            &self.wx, &self.wh, &self.b, &self.w1, &self.b1, &self.w2, &self.b2,
        ]
    }

    /// Seeded init: uniform(±1/sqrt(fan_in)); forget-gate bias 1 so the
    /// cell remembers by default.
    fn init(cfg: &LstmConfig, rng: &mut ChaCha8Rng) -> Self {
        let mut mat = |rows: usize, cols: usize, fan_in: usize| -> Vec<f32> {
            let k = 1.0 / (fan_in as f32).sqrt();
            (0..rows * cols).map(|_| rng.random_range(-k..k)).collect()
        };
        let h = cfg.hidden;
        let hin = h + cfg.extra();
        let out = cfg.horizon * cfg.nq();
        let wx = mat(STEP_FEATURES, 4 * h, STEP_FEATURES + h);
        let wh = mat(h, 4 * h, STEP_FEATURES + h);
        let mut b = vec![0.0; 4 * h];
        b[h..2 * h].iter_mut().for_each(|x| *x = 1.0);
        let w1 = mat(hin, cfg.head_hidden, hin);
        let b1 = vec![0.0; cfg.head_hidden];
        let w2 = mat(cfg.head_hidden, out, cfg.head_hidden);
        let b2 = vec![0.0; out];
        Self {
            wx,
            wh,
            b,
            w1,
            b1,
            w2,
            b2,
        }
    }

    fn check(&self, cfg: &LstmConfig) -> Result<(), String> {
        for ((name, r, c), v) in Self::shapes(cfg).iter().zip(self.parts()) {
            if v.len() != r * c {
                return Err(format!(
                    "weight {name} has {} values, config needs {r}x{c}",
                    v.len()
                ));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(format!("weight {name} holds a non-finite value"));
            }
            let max = crate::limits::MAX_ABS_WEIGHT;
            if let Some(x) = v.iter().find(|x| x.abs() > max) {
                return Err(format!("weight {name} holds {x}, beyond ±{max}"));
            }
        }
        Ok(())
    }
}

/// The burn module: an LSTM cell unrolled over the window and an MLP head.
/// Parameters are plain tensors so the plain-Rust inference path can use the
/// very same numbers.
#[derive(Module, Debug)]
pub struct Net {
    wx: Param<Tensor<2>>,
    wh: Param<Tensor<2>>,
    b: Param<Tensor<1>>,
    w1: Param<Tensor<2>>,
    b1: Param<Tensor<1>>,
    w2: Param<Tensor<2>>,
    b2: Param<Tensor<1>>,
}

fn t2(v: &[f32], r: usize, c: usize, d: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v.to_vec(), [r, c]), d)
}

fn t1(v: &[f32], d: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), d)
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap_or_default()
}

impl Net {
    pub fn from_weights(w: &Weights, cfg: &LstmConfig, d: &Device) -> Self {
        let h4 = 4 * cfg.hidden;
        let hin = cfg.hidden + cfg.extra();
        let out = cfg.horizon * cfg.nq();
        Self {
            wx: Param::from_tensor(t2(&w.wx, STEP_FEATURES, h4, d)),
            wh: Param::from_tensor(t2(&w.wh, cfg.hidden, h4, d)),
            b: Param::from_tensor(t1(&w.b, d)),
            w1: Param::from_tensor(t2(&w.w1, hin, cfg.head_hidden, d)),
            b1: Param::from_tensor(t1(&w.b1, d)),
            w2: Param::from_tensor(t2(&w.w2, cfg.head_hidden, out, d)),
            b2: Param::from_tensor(t1(&w.b2, d)),
        }
    }

    pub fn to_weights(&self) -> Weights {
        Weights {
            wx: to_vec(self.wx.val()),
            wh: to_vec(self.wh.val()),
            b: to_vec(self.b.val()),
            w1: to_vec(self.w1.val()),
            b1: to_vec(self.b1.val()),
            w2: to_vec(self.w2.val()),
            b2: to_vec(self.b2.val()),
        }
    }

    /// `steps` [B, W, F], `extra` [B, E] → quantiles in normalised delta
    /// units [B, horizon, Q], ascending along Q.
    pub fn forward(&self, steps: Tensor<3>, extra: Tensor<2>, cfg: &LstmConfig) -> Tensor<3> {
        let [bsz, w, f] = steps.dims();
        let h = cfg.hidden;
        let d = steps.device();
        // one matmul for all input projections
        let xw = steps
            .reshape([bsz * w, f])
            .matmul(self.wx.val())
            .reshape([bsz, w, 4 * h])
            .add(self.b.val().unsqueeze::<3>());
        let mut hs: Tensor<2> = Tensor::zeros([bsz, h], &d);
        let mut cs: Tensor<2> = Tensor::zeros([bsz, h], &d);
        let wh = self.wh.val();
        for t in 0..w {
            let g = xw.clone().narrow(1, t, 1).reshape([bsz, 4 * h]) + hs.matmul(wh.clone());
            let i = sigmoid(g.clone().narrow(1, 0, h));
            let fg = sigmoid(g.clone().narrow(1, h, h));
            let gg = tanh(g.clone().narrow(1, 2 * h, h));
            let o = sigmoid(g.narrow(1, 3 * h, h));
            cs = fg * cs + i * gg;
            hs = o * tanh(cs.clone());
        }
        let z = Tensor::cat(vec![hs, extra], 1);
        let z = relu(z.matmul(self.w1.val()).add(self.b1.val().unsqueeze::<2>()));
        let raw = z.matmul(self.w2.val()).add(self.b2.val().unsqueeze::<2>());
        let nq = cfg.nq();
        let raw = raw.reshape([bsz * cfg.horizon, nq]);
        let (mask, mono) = monotone_mats(cfg);
        let mask = t2(&mask, 1, nq, &d);
        let mono = t2(&mono, nq, nq, &d);
        let inc =
            raw.clone().mul(mask.clone()) + softplus(raw, 1.0).mul(mask.neg().add_scalar(1.0));
        inc.matmul(mono).reshape([bsz, cfg.horizon, nq])
    }
}

/// `mask` marks the anchor column (1) vs softplus columns (0); `mono` [Q, Q]
/// sums increments outward from the anchor: `z = inc @ mono`.
fn monotone_mats(cfg: &LstmConfig) -> (Vec<f32>, Vec<f32>) {
    let nq = cfg.nq();
    let a = cfg.anchor();
    let mut mask = vec![0.0; nq];
    mask[a] = 1.0;
    let mut m = vec![0.0f32; nq * nq];
    for q in 0..nq {
        m[a * nq + q] = 1.0;
        if q < a {
            for j in q..a {
                m[j * nq + q] = -1.0;
            }
        } else if q > a {
            for j in a + 1..=q {
                m[j * nq + q] = 1.0;
            }
        }
    }
    (mask, m)
}

/// Inputs of one forecast origin.
struct Inputs {
    steps: Vec<f32>,
    extra: Vec<f32>,
    last: f64,
    scale: f64,
}

fn calendar(t: Millis) -> [f32; 4] {
    use std::f64::consts::TAU;
    let day = t.rem_euclid(DAY_MS) as f64 / DAY_MS as f64;
    let days = t.div_euclid(DAY_MS);
    let week = ((days + 3).rem_euclid(7)) as f64 / 7.0; // Monday = 0
    [
        (TAU * day).sin() as f32,
        (TAU * day).cos() as f32,
        (TAU * week).sin() as f32,
        (TAU * week).cos() as f32,
    ]
}

/// Build the inputs for a forecast made after `y` (history up to the origin,
/// first bucket at `start`). `None` if shorter than the window.
fn inputs(y: &[f64], start: Millis, cfg: &LstmConfig) -> Option<Inputs> {
    let n = y.len();
    if n < cfg.window {
        return None;
    }
    let win = &y[n - cfg.window..];
    let mean = win.iter().sum::<f64>() / cfg.window as f64;
    let scale = if mean > 1e-9 && mean.is_finite() {
        mean
    } else {
        1.0
    };
    let last = y[n - 1];
    let mut steps = Vec::with_capacity(cfg.window * STEP_FEATURES);
    for (i, &v) in win.iter().enumerate() {
        let t = start + (n - cfg.window + i) as i64 * cfg.bucket_ms;
        steps.push((v / scale - 1.0) as f32);
        steps.extend_from_slice(&calendar(t));
    }
    let m = cfg.season as i64;
    let mut extra = Vec::with_capacity(cfg.extra());
    for h in 1..=cfg.horizon {
        // The nearest whole number of seasons back that is already observed:
        // one season for a step inside the first season ahead, more when the
        // horizon is longer than a season (target n + h - 1, history < n).
        let k0 = h.div_ceil(cfg.season).max(1) as i64;
        // same time of day one (or k0) days back (0 when history is shorter)
        let idx = n as i64 + h as i64 - 1 - k0 * m;
        let d1 = if idx >= 0 {
            (y[idx as usize] - last) / scale
        } else {
            0.0
        };
        // mean of the same time of day over up to 7 days
        let (mut s, mut c) = (0.0, 0);
        for k in k0..k0 + 7 {
            let j = n as i64 + h as i64 - 1 - k * m;
            if j >= 0 {
                s += y[j as usize];
                c += 1;
            }
        }
        let d7 = if c > 0 {
            (s / c as f64 - last) / scale
        } else {
            0.0
        };
        extra.push(d1.clamp(-50.0, 50.0) as f32);
        extra.push(d7.clamp(-50.0, 50.0) as f32);
    }
    extra.push((last / scale - 1.0).clamp(-50.0, 50.0) as f32);
    extra.push((scale.ln().clamp(-30.0, 30.0) / 10.0) as f32);
    Some(Inputs {
        steps,
        extra,
        last,
        scale,
    })
}

fn sigm(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `tanh` through one `f64` exponential, rounded to `f32`: glibc's `tanhf`
/// goes through a slow `expm1f` and was half of a forecast's time. In `f64`
/// the cancellation near 0 stays far below `f32` precision, so this is
/// within an ulp of the true value (a test bounds it), as `tanhf` is; the
/// two can differ in the last bit, which moved 2 of the sample backtest's
/// 1,175 commands by one vCPU and none of its costs.
fn tanh_f(x: f32) -> f32 {
    if x.abs() > 10.0 {
        // tanh(10) = 1 - 4e-9: 1 in f32 (and exp(2x) overflows far above).
        return x.signum();
    }
    if x.abs() < 1e-4 {
        // tanh x = x (1 - x²/3 + …): x itself in f32, and exp would lose it.
        return x;
    }
    let e = (2.0 * f64::from(x)).exp();
    ((e - 1.0) / (e + 1.0)) as f32
}

fn softplus_f(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// `out[j] += sum_i x[i] * w[i, j]` for a row-major `[in, out]` matrix.
///
/// Compiled twice: with AVX2 where the CPU has it (twice the lanes of the
/// baseline's SSE2 on the inner loop, most of a forecast's time), and
/// plain. Both do the same `f32` multiplications and additions in the same
/// order per output (no fused multiply-add, which would round once instead
/// of twice), so the results are identical bit for bit.
fn gemv_acc(x: &[f32], w: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { gemv_acc_avx2(x, w, out) };
    }
    gemv_acc_plain(x, w, out);
}

/// [`gemv_acc_plain`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gemv_acc_avx2(x: &[f32], w: &[f32], out: &mut [f32]) {
    gemv_acc_plain(x, w, out);
}

#[inline(always)]
fn gemv_acc_plain(x: &[f32], w: &[f32], out: &mut [f32]) {
    let n = out.len();
    for (i, &xi) in x.iter().enumerate() {
        if xi == 0.0 {
            continue;
        }
        let row = &w[i * n..(i + 1) * n];
        for (o, &wv) in out.iter_mut().zip(row) {
            *o += xi * wv;
        }
    }
}

/// Plain-Rust forward of one origin: normalised quantiles `[horizon * Q]`.
fn forward_one(w: &Weights, cfg: &LstmConfig, steps: &[f32], extra: &[f32]) -> Vec<f32> {
    head(w, cfg, &recur(w, cfg, steps), extra)
}

/// The LSTM's hidden state after the input window.
fn recur(w: &Weights, cfg: &LstmConfig, steps: &[f32]) -> Vec<f32> {
    let h = cfg.hidden;
    let mut hs = vec![0.0f32; h];
    let mut cs = vec![0.0f32; h];
    let mut g = vec![0.0f32; 4 * h];
    for x in steps.chunks_exact(STEP_FEATURES) {
        g.copy_from_slice(&w.b);
        gemv_acc(x, &w.wx, &mut g);
        gemv_acc(&hs, &w.wh, &mut g);
        cell(&g, &mut hs, &mut cs);
    }
    hs
}

/// One LSTM cell update from the gates `g` (`[4 * hidden]`: input, forget,
/// candidate, output): the cell state `cs` and hidden state `hs` in place.
fn cell(g: &[f32], hs: &mut [f32], cs: &mut [f32]) {
    let h = hs.len();
    for k in 0..h {
        let i = sigm(g[k]);
        let f = sigm(g[h + k]);
        let gg = tanh_f(g[2 * h + k]);
        let o = sigm(g[3 * h + k]);
        cs[k] = f * cs[k] + i * gg;
        hs[k] = o * tanh_f(cs[k]);
    }
}

/// [`recur`] of several input windows of the same length at once: the
/// hidden states, one after another (`[windows * hidden]`). Each window
/// gets the same `f32` operations in the same order as alone, so the same
/// states; the weights are walked once per step for all of them
/// ([`gemm_acc`]).
fn recur_batch(w: &Weights, cfg: &LstmConfig, windows: &[&[f32]]) -> Vec<f32> {
    let (h, b) = (cfg.hidden, windows.len());
    let len = windows.first().map_or(0, |x| x.len());
    debug_assert!(windows.iter().all(|x| x.len() == len));
    let mut hs = vec![0.0f32; b * h];
    let mut cs = vec![0.0f32; b * h];
    let mut g = vec![0.0f32; b * 4 * h];
    let mut xs = vec![0.0f32; b * STEP_FEATURES];
    for t in (0..len).step_by(STEP_FEATURES) {
        for (x, win) in xs.chunks_exact_mut(STEP_FEATURES).zip(windows) {
            x.copy_from_slice(&win[t..t + STEP_FEATURES]);
        }
        for gk in g.chunks_exact_mut(4 * h) {
            gk.copy_from_slice(&w.b);
        }
        gemm_acc(&xs, STEP_FEATURES, &w.wx, &mut g);
        gemm_acc(&hs, h, &w.wh, &mut g);
        let each = g.chunks_exact(4 * h).zip(hs.chunks_exact_mut(h));
        for ((g, hs), cs) in each.zip(cs.chunks_exact_mut(h)) {
            cell(g, hs, cs);
        }
    }
    hs
}

/// [`gemv_acc`] of each row of `x` (`[rows, n_in]`) into the same row of
/// `out` (`[rows, n]`): per output, the same multiplications and additions
/// in the same order as [`gemv_acc`] (input index ascending, zero inputs
/// skipped), so the same `f32`s. Each weight row is read once for every
/// row of `x`, while it is in cache.
fn gemm_acc(x: &[f32], n_in: usize, w: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { gemm_acc_avx2(x, n_in, w, out) };
    }
    gemm_acc_plain(x, n_in, w, out);
}

/// [`gemm_acc_plain`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gemm_acc_avx2(x: &[f32], n_in: usize, w: &[f32], out: &mut [f32]) {
    gemm_acc_plain(x, n_in, w, out);
}

#[inline(always)]
fn gemm_acc_plain(x: &[f32], n_in: usize, w: &[f32], out: &mut [f32]) {
    let n = w.len() / n_in.max(1);
    for i in 0..n_in {
        let row = &w[i * n..(i + 1) * n];
        for (xr, o) in x.chunks_exact(n_in).zip(out.chunks_exact_mut(n)) {
            let xi = xr[i];
            if xi == 0.0 {
                continue;
            }
            for (o, &wv) in o.iter_mut().zip(row) {
                *o += xi * wv;
            }
        }
    }
}

/// The output head: normalised quantiles `[horizon * Q]` from the hidden
/// state and the seasonal features.
fn head(w: &Weights, cfg: &LstmConfig, hs: &[f32], extra: &[f32]) -> Vec<f32> {
    let h = cfg.hidden;
    let mut z1 = w.b1.clone();
    gemv_acc(hs, &w.w1[..h * cfg.head_hidden], &mut z1);
    gemv_acc(extra, &w.w1[h * cfg.head_hidden..], &mut z1);
    z1.iter_mut().for_each(|v| *v = v.max(0.0));
    let mut raw = w.b2.clone();
    gemv_acc(&z1, &w.w2, &mut raw);
    let nq = cfg.nq();
    let a = cfg.anchor();
    let mut out = vec![0.0f32; raw.len()];
    for (r, o) in raw.chunks_exact(nq).zip(out.chunks_exact_mut(nq)) {
        o[a] = r[a];
        for q in (0..a).rev() {
            o[q] = o[q + 1] - softplus_f(r[q]);
        }
        for q in a + 1..nq {
            o[q] = o[q - 1] + softplus_f(r[q]);
        }
    }
    out
}

/// A trained LSTM forecaster (weights + calibration), with the statistical
/// model as cold-start fallback.
#[derive(Debug, Clone)]
pub struct LstmForecaster {
    pub config: LstmConfig,
    pub weights: Weights,
    /// Per (horizon, quantile) spread factors from calibration (1 = none).
    pub calibration: Vec<f32>,
    /// Used when the history is shorter than the window, the bucket width
    /// differs from training, or more horizon / other levels are asked for.
    pub fallback: Ets,
    /// Forecast values clamped to the sanity bound so far (see
    /// [`LstmForecaster::clamped`]); shared by clones.
    clamped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Outputs for quiet inputs, by the origin's time in the week (see
    /// [`quiet_origin`]).
    quiet: QuietMemo,
    /// Hidden states after an all-zero input window, by the origin's time
    /// in the week (see [`quiet_window`]): after a burst the seasonal lags
    /// read it for a week while the window is already empty.
    recurrent: QuietMemo,
}

/// Memo of the network's values for *quiet* inputs, by the forecast
/// origin's time within the week: outputs when every value the inputs read
/// is exactly 0, hidden states when the input window is. Such inputs differ
/// only by their calendar features, which repeat every week, so one pass
/// per time of the week serves every quiet stretch: after a burst of work
/// the history still holds it for days, but most ticks read only zeros.
/// Exact: the same inputs give the same `f32`s. Each instance keeps its own
/// (a clone starts empty), filled only by forecasts, after the weights are set.
#[derive(Debug, Default)]
struct QuietMemo(std::sync::Mutex<std::collections::HashMap<i64, std::sync::Arc<[f32]>>>);

/// Bound on [`QuietMemo`]'s entries: a week of 5-minute buckets is 2,016,
/// and origins off the bucket grid (none in practice) cannot grow it past this.
const QUIET_MEMO_MAX: usize = 8192;

impl Clone for QuietMemo {
    fn clone(&self) -> Self {
        QuietMemo::default()
    }
}

impl QuietMemo {
    fn get(&self, key: i64) -> Option<std::sync::Arc<[f32]>> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&key).cloned()
    }

    fn put(&self, key: i64, z: &[f32]) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() < QUIET_MEMO_MAX {
            m.insert(key, z.into());
        }
    }
}

/// The origin's time within the week when every value [`inputs`] reads of
/// `y` is exactly `+0.0` (the last window and each horizon step's seasonal
/// lags): the inputs are then those of an all-zero history at that time of
/// the week. `None` otherwise, or when `y` is shorter than the window.
fn quiet_origin(y: &[f64], start: Millis, cfg: &LstmConfig) -> Option<i64> {
    quiet_window(y, start, cfg).filter(|_| lags_quiet(y, cfg))
}

/// Whether every seasonal lag [`inputs`] reads of `y` is exactly `+0.0`
/// (never, without a season): with a quiet window, the origin is then quiet.
fn lags_quiet(y: &[f64], cfg: &LstmConfig) -> bool {
    let n = y.len();
    cfg.season > 0 && lag_distances(cfg).all(|d| d > n || y[n - d].to_bits() == 0)
}

/// The origin's time within the week when the input window of `y` is all
/// exactly `+0.0`: the step inputs (and so the LSTM's hidden state) are then
/// those of an all-zero window at that time of the week, whatever the
/// seasonal lags read. `None` otherwise, or when `y` is shorter than the window.
fn quiet_window(y: &[f64], start: Millis, cfg: &LstmConfig) -> Option<i64> {
    let n = y.len();
    if n < cfg.window || !y[n - cfg.window..].iter().all(|&v| v.to_bits() == 0) {
        return None;
    }
    let origin = start.checked_add((n as i64).checked_mul(cfg.bucket_ms)?)?;
    Some(origin.rem_euclid(7 * DAY_MS))
}

/// How many origins from `y`'s end on stay quiet (see [`quiet_origin`])
/// were only zeros appended: 0 when the end is not quiet, `u64::MAX` when
/// no value `y` holds is ever read again. Origin `n` reads `y[n - d]` for
/// each distance `d` of [`read_distances`]; a later origin `n + i` reads a
/// non-zero `y[p]` first at the least `i = p + d - n ≥ 1`.
fn quiet_run(y: &[f64], start: Millis, cfg: &LstmConfig) -> u64 {
    if quiet_origin(y, start, cfg).is_none() {
        return 0;
    }
    let n = y.len();
    let ds = read_distances(cfg);
    let far = ds.iter().copied().max().unwrap_or(0);
    // Positions of the values that are not +0.0 and can still be read.
    let nonzero: Vec<usize> = (n.saturating_sub(far)..n)
        .filter(|&p| y[p].to_bits() != 0)
        .collect();
    let mut first = u64::MAX;
    for d in ds {
        // the least p with p + d - n >= 1
        let lo = (n + 1).saturating_sub(d);
        let i = nonzero.partition_point(|&p| p < lo);
        if let Some(&p) = nonzero.get(i) {
            first = first.min((p + d - n) as u64);
        }
    }
    first
}

/// Every distance `d ≥ 1` back from the origin at which [`inputs`] reads
/// the history: the window, and each horizon step's seasonal lags.
fn read_distances(cfg: &LstmConfig) -> Vec<usize> {
    let mut ds: Vec<usize> = (1..=cfg.window).chain(lag_distances(cfg)).collect();
    ds.sort_unstable();
    ds.dedup();
    ds
}

/// The distances `d ≥ 1` back from the origin of each horizon step's seven
/// seasonal lags ([`inputs`] reads `y[n + h - 1 - k·m] = y[n - d]`); none
/// without a season.
fn lag_distances(cfg: &LstmConfig) -> impl Iterator<Item = usize> {
    let m = cfg.season;
    (1..=cfg.horizon).filter(move |_| m > 0).flat_map(move |h| {
        let k0 = h.div_ceil(m.max(1)).max(1);
        (k0..k0 + 7).filter_map(move |k| (k * m + 1).checked_sub(h).filter(|&d| d >= 1))
    })
}

/// What training measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainReport {
    pub series: usize,
    pub train_windows: usize,
    pub val_windows: usize,
    pub steps: usize,
    pub final_loss: f64,
    /// Coverage of the outermost central interval on the validation slice,
    /// before and after calibration.
    pub val_coverage_raw: f64,
    pub val_coverage_calibrated: f64,
    /// Wall time of the training, measured and set by the caller (the
    /// core reads no clock; `train` leaves it 0).
    pub train_s: f64,
    pub device: String,
}

/// Progress callback payload.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub epoch: usize,
    pub step: usize,
    pub total_steps: usize,
    pub loss: f64,
}

/// Where training runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Gpu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "gpu" => Ok(Self::Gpu),
            _ => Err(format!("unknown device {s:?} (cpu or gpu)")),
        }
    }
}

/// The burn device for a choice: ndarray on CPU, wgpu with the `gpu` feature.
pub fn burn_device(choice: DeviceChoice) -> Result<Device, ForecastError> {
    match choice {
        #[allow(deprecated)] // ndarray is the CPU backend this crate is built with
        DeviceChoice::Cpu => Ok(Device::ndarray()),
        #[cfg(feature = "gpu")]
        DeviceChoice::Gpu => Ok(Device::wgpu(DeviceKind::DefaultDevice)),
        #[cfg(not(feature = "gpu"))]
        DeviceChoice::Gpu => Err(ForecastError::DeviceUnavailable("gpu".into())),
    }
}

/// Train one shared model on every series (each `History` holds only data
/// before the training cut). The last `val_frac` of each series is held out
/// for calibration. Deterministic for a seed on the CPU backend.
pub fn train(
    series: &[History<'_>],
    cfg: &LstmConfig,
    device: DeviceChoice,
    progress: &mut dyn FnMut(Progress),
) -> Result<(LstmForecaster, TrainReport), ForecastError> {
    cfg.validate().map_err(ForecastError::Training)?;
    let dev = burn_device(device)?;
    dev.seed(cfg.seed);
    let ad = dev.clone().autodiff();
    // (series, origin) pairs: origin T means history y[..T], targets y[T..T+H]
    let mut train_idx: Vec<(u32, u32)> = Vec::new();
    let mut val_idx: Vec<(u32, u32)> = Vec::new();
    for (si, s) in series.iter().enumerate() {
        if s.bucket_ms != cfg.bucket_ms {
            return Err(ForecastError::Training(format!(
                "series {} has bucket {} ms, config {} ms",
                s.key, s.bucket_ms, cfg.bucket_ms
            )));
        }
        let n = s.values.len();
        let n_fit = ((n as f64) * (1.0 - cfg.val_frac)).floor() as usize;
        for t in cfg.window..=n_fit.saturating_sub(cfg.horizon) {
            train_idx.push((si as u32, t as u32));
        }
        let mut t = n_fit.max(cfg.window);
        while t + cfg.horizon <= n {
            val_idx.push((si as u32, t as u32));
            t += 1;
        }
    }
    // calibration needs a few thousand origins, not every one
    if val_idx.len() > MAX_VAL_ORIGINS {
        let step = val_idx.len().div_ceil(MAX_VAL_ORIGINS);
        val_idx = val_idx.into_iter().step_by(step).collect();
    }
    if train_idx.is_empty() {
        return Err(ForecastError::NoData(format!(
            "no series has {} buckets before its validation slice",
            cfg.window + cfg.horizon
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let init = Weights::init(cfg, &mut rng);
    let mut net = Net::from_weights(&init, cfg, &ad);
    let mut optim = AdamConfig::new()
        .with_grad_clipping(Some(burn::grad_clipping::GradientClippingConfig::Norm(1.0)))
        .init();
    let nq = cfg.nq();
    let taus: Vec<f32> = cfg.quantiles.iter().map(|&q| q as f32).collect();
    let total = cfg.epochs * cfg.steps_per_epoch;
    let mut step = 0;
    let mut final_loss = f64::NAN;
    let e = cfg.extra();
    for epoch in 0..cfg.epochs {
        let mut ep_loss = 0.0;
        for _ in 0..cfg.steps_per_epoch {
            let mut steps = Vec::with_capacity(cfg.batch * cfg.window * STEP_FEATURES);
            let mut extra = Vec::with_capacity(cfg.batch * e);
            let mut target = Vec::with_capacity(cfg.batch * cfg.horizon);
            for _ in 0..cfg.batch {
                let (si, t) = train_idx[rng.random_range(0..train_idx.len())];
                let s = &series[si as usize];
                let t = t as usize;
                let inp = inputs(&s.values[..t], s.start, cfg).expect("origin >= window");
                steps.extend_from_slice(&inp.steps);
                extra.extend_from_slice(&inp.extra);
                for h in 0..cfg.horizon {
                    let z = (s.values[t + h] - inp.last) / inp.scale;
                    target.push(z.clamp(-cfg.target_clip, cfg.target_clip) as f32);
                }
            }
            let b = cfg.batch;
            let x =
                Tensor::<3>::from_data(TensorData::new(steps, [b, cfg.window, STEP_FEATURES]), &ad);
            let ex = Tensor::<2>::from_data(TensorData::new(extra, [b, e]), &ad);
            let y = Tensor::<3>::from_data(TensorData::new(target, [b, cfg.horizon, 1]), &ad);
            let tau = Tensor::<3>::from_data(TensorData::new(taus.clone(), [1, 1, nq]), &ad);
            let pred = net.forward(x, ex, cfg);
            let diff = y.expand([b, cfg.horizon, nq]) - pred;
            let loss = diff
                .clone()
                .mul(tau.clone())
                .max_pair(diff.mul(tau.sub_scalar(1.0)))
                .mean();
            let lv = loss.clone().into_scalar::<f32>() as f64;
            if !lv.is_finite() {
                return Err(ForecastError::Training(format!(
                    "loss became {lv} at step {step}; lower --lr"
                )));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(cfg.lr, net, grads);
            ep_loss += lv;
            step += 1;
            progress(Progress {
                epoch,
                step,
                total_steps: total,
                loss: lv,
            });
        }
        final_loss = ep_loss / cfg.steps_per_epoch.max(1) as f64;
    }
    let weights = net.to_weights();
    weights.check(cfg).map_err(ForecastError::Training)?;
    let mut model = LstmForecaster {
        config: cfg.clone(),
        weights,
        calibration: vec![1.0; cfg.horizon * nq],
        fallback: Ets::default(),
        clamped: Default::default(),
        quiet: Default::default(),
        recurrent: Default::default(),
    };
    let val = model.raw_batch(series, &val_idx, &dev);
    let raw_cov = model.val_coverage(series, &val);
    model.calibration = model.calibrate(series, &val);
    let cal_cov = model.val_coverage(series, &val);
    let report = TrainReport {
        series: series.len(),
        train_windows: train_idx.len(),
        val_windows: val_idx.len(),
        steps: step,
        final_loss,
        val_coverage_raw: raw_cov,
        val_coverage_calibrated: cal_cov,
        train_s: 0.0,
        device: format!("{device:?}").to_lowercase(),
    };
    Ok((model, report))
}

/// Normalised, uncalibrated quantiles and the inputs' last and scale.
type Raw = (Vec<f32>, f64, f64);

/// A history's way through the network: answered (from a memo, or through
/// the output head on a memoised hidden state), or needing the recurrence.
enum Prepared {
    Answered(Raw),
    Recur(Inputs),
}

impl LstmForecaster {
    /// Normalised, uncalibrated quantiles and the inputs' last/scale.
    fn raw(&self, y: &[f64], start: Millis) -> Option<Raw> {
        Some(match self.prepare(y, start)? {
            Prepared::Answered(raw) => raw,
            Prepared::Recur(inp) => {
                let z = forward_one(&self.weights, &self.config, &inp.steps, &inp.extra);
                (z, inp.last, inp.scale)
            }
        })
    }

    /// [`LstmForecaster::raw`] of several histories (`None`: not asked),
    /// the recurrences of those the memos do not answer run together
    /// ([`recur_batch`], the same `f32`s as one by one).
    fn raw_batch_cpu(&self, hs: &[Option<&History<'_>>]) -> Vec<Option<Raw>> {
        let mut out: Vec<Option<Raw>> = Vec::with_capacity(hs.len());
        let mut pending: Vec<(usize, Inputs)> = Vec::new();
        for h in hs {
            match h.and_then(|h| self.prepare(h.values, h.start)) {
                Some(Prepared::Recur(inp)) => {
                    pending.push((out.len(), inp));
                    out.push(None);
                }
                Some(Prepared::Answered(raw)) => out.push(Some(raw)),
                None => out.push(None),
            }
        }
        let windows: Vec<&[f32]> = pending.iter().map(|(_, inp)| &inp.steps[..]).collect();
        let states = recur_batch(&self.weights, &self.config, &windows);
        for ((i, inp), hs) in pending
            .into_iter()
            .zip(states.chunks_exact(self.config.hidden))
        {
            let z = head(&self.weights, &self.config, hs, &inp.extra);
            out[i] = Some((z, inp.last, inp.scale));
        }
        out
    }

    /// How `raw` answers `y`: from the quiet memos where they apply (see
    /// [`QuietMemo`]), else the inputs for the whole network.
    fn prepare(&self, y: &[f64], start: Millis) -> Option<Prepared> {
        let window = quiet_window(y, start, &self.config);
        let quiet = window.filter(|_| lags_quiet(y, &self.config));
        if let Some(z) = quiet.and_then(|k| self.quiet.get(k)) {
            // What `inputs` gives a quiet history: last 0, scale 1.
            return Some(Prepared::Answered((z.to_vec(), 0.0, 1.0)));
        }
        let inp = inputs(y, start, &self.config)?;
        // Only the seasonal lags are non-zero: the hidden state is the
        // quiet one of this time of the week.
        let Some(k) = window else {
            return Some(Prepared::Recur(inp));
        };
        let hs = self.recurrent.get(k).unwrap_or_else(|| {
            let hs = recur(&self.weights, &self.config, &inp.steps);
            self.recurrent.put(k, &hs);
            hs.into()
        });
        let z = head(&self.weights, &self.config, &hs, &inp.extra);
        if let Some(k) = quiet {
            self.quiet.put(k, &z);
        }
        Some(Prepared::Answered((z, inp.last, inp.scale)))
    }

    /// Normalised forecasts of many origins through burn in batches (fast
    /// for calibration over thousands of origins).
    fn raw_batch(&self, series: &[History<'_>], idx: &[(u32, u32)], dev: &Device) -> Vec<ValRow> {
        let per = self.config.horizon * self.config.nq();
        let mut out = Vec::with_capacity(idx.len());
        for chunk in idx.chunks(512) {
            let hs: Vec<History<'_>> = chunk
                .iter()
                .map(|&(si, t)| {
                    let s = &series[si as usize];
                    History {
                        values: &s.values[..t as usize],
                        ..*s
                    }
                })
                .collect();
            let Some(z) = self.burn_forward(&hs, dev) else {
                continue;
            };
            for (k, (&(si, t), h)) in chunk.iter().zip(&hs).enumerate() {
                if let Some(inp) = inputs(h.values, h.start, &self.config) {
                    let zk = z[k * per..(k + 1) * per].to_vec();
                    out.push((si as usize, t as usize, zk, inp.last, inp.scale));
                }
            }
        }
        out
    }

    /// Calibrated, denormalised `[h][q]` rows from normalised quantiles.
    fn denormalise(&self, z: &[f32], last: f64, scale: f64) -> Vec<Vec<f64>> {
        let nq = self.config.nq();
        let a = self.config.anchor();
        let mut out = Vec::with_capacity(self.config.horizon);
        for (h, row) in z.chunks_exact(nq).enumerate() {
            let za = row[a] as f64;
            let mut r: Vec<f64> = row
                .iter()
                .enumerate()
                .map(|(q, &v)| {
                    let k = self.calibration[h * nq + q] as f64;
                    let zc = za + k * (v as f64 - za);
                    last + scale * zc
                })
                .collect();
            for v in r.iter_mut() {
                if !v.is_finite() || *v < 0.0 {
                    *v = 0.0;
                }
            }
            r.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            out.push(r);
        }
        out
    }

    /// Split-conformal style factors per (horizon, quantile): for each
    /// non-anchor level, the factor `k` that makes `anchor + k·(q − anchor)`
    /// hold the nominal share of validation targets below it.
    fn calibrate(&self, series: &[History<'_>], val: &[ValRow]) -> Vec<f32> {
        let cfg = &self.config;
        let nq = cfg.nq();
        let a = cfg.anchor();
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); cfg.horizon * nq];
        for (si, t, z, last, scale) in val {
            let (s, t, last, scale) = (&series[*si], *t, *last, *scale);
            for h in 0..cfg.horizon {
                let y = (s.values[t + h] - last) / scale;
                let za = z[h * nq + a] as f64;
                for q in 0..nq {
                    if q == a {
                        continue;
                    }
                    let d = z[h * nq + q] as f64 - za;
                    if d.abs() > 1e-9 {
                        ratios[h * nq + q].push((y - za) / d);
                    }
                }
            }
        }
        let mut k = vec![1.0f32; cfg.horizon * nq];
        for h in 0..cfg.horizon {
            for q in 0..nq {
                let r = &mut ratios[h * nq + q];
                if q == a || r.len() < 20 {
                    continue;
                }
                r.sort_by(|x, y| x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal));
                let tau = cfg.quantiles[q];
                let p = if q > a { tau } else { 1.0 - tau };
                let kv = super::sorted_quantile(r, p);
                k[h * nq + q] = kv.clamp(0.05, 50.0) as f32;
            }
        }
        k
    }

    /// Coverage of the outermost central interval on the validation origins.
    fn val_coverage(&self, series: &[History<'_>], val: &[ValRow]) -> f64 {
        let pairs = super::metrics::interval_pairs(&self.config.quantiles);
        let Some(&(lo, hi, _)) = pairs.first() else {
            return f64::NAN;
        };
        let (mut inside, mut total) = (0usize, 0usize);
        for (si, t, z, last, scale) in val {
            let (s, t) = (&series[*si], *t);
            let p = self.denormalise(z, *last, *scale);
            for (h, row) in p.iter().enumerate() {
                let y = s.values[t + h];
                total += 1;
                if row[lo] <= y && y <= row[hi] {
                    inside += 1;
                }
            }
        }
        if total == 0 {
            f64::NAN
        } else {
            inside as f64 / total as f64
        }
    }

    /// Run the burn forward on a batch (used to check the plain path and by
    /// the GPU build for batched inference). Returns normalised quantiles.
    pub fn burn_forward(&self, histories: &[History<'_>], device: &Device) -> Option<Vec<f32>> {
        let cfg = &self.config;
        let mut steps = Vec::new();
        let mut extra = Vec::new();
        for h in histories {
            let inp = inputs(h.values, h.start, cfg)?;
            steps.extend(inp.steps);
            extra.extend(inp.extra);
        }
        let b = histories.len();
        let net = Net::from_weights(&self.weights, cfg, device);
        let x = Tensor::<3>::from_data(
            TensorData::new(steps, [b, cfg.window, STEP_FEATURES]),
            device,
        );
        let ex = Tensor::<2>::from_data(TensorData::new(extra, [b, cfg.extra()]), device);
        Some(to_vec(net.forward(x, ex, cfg)))
    }

    /// The checkpoint as bytes: JSON with a SHA-256 over its content, so a
    /// truncated or edited copy is detected when read back. Files are the
    /// caller's business (`model_file`), so the forecaster does no I/O.
    pub fn to_checkpoint(&self) -> Vec<u8> {
        let body = Body {
            config: self.config.clone(),
            weights: self.weights.clone(),
            calibration: self.calibration.clone(),
        };
        let sha256 = body.digest();
        let ck = Checkpoint {
            format: FORMAT.into(),
            version: VERSION,
            sha256,
            body,
        };
        // Plain numbers, strings and vectors: serialising cannot fail.
        serde_json::to_vec(&ck).expect("a checkpoint serialises")
    }

    /// Read and verify a checkpoint's bytes (format, version, checksum,
    /// shapes). `origin` names where they came from in errors (a path).
    pub fn from_checkpoint(bytes: &[u8], origin: &str) -> Result<Self, ForecastError> {
        let p = origin.to_string();
        let ck: Checkpoint = serde_json::from_slice(bytes).map_err(|e| ForecastError::Corrupt {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        if ck.format != FORMAT {
            return Err(ForecastError::Mismatch {
                path: p,
                reason: format!("format {:?}, expected {FORMAT:?}", ck.format),
            });
        }
        if ck.version != VERSION {
            return Err(ForecastError::Mismatch {
                path: p,
                reason: format!("version {}, this build reads {VERSION}", ck.version),
            });
        }
        if ck.body.digest() != ck.sha256 {
            return Err(ForecastError::Corrupt {
                path: p,
                reason: "checksum does not match the content".into(),
            });
        }
        let b = ck.body;
        b.config
            .validate()
            .and_then(|_| b.weights.check(&b.config))
            .map_err(|reason| ForecastError::Mismatch {
                path: p.clone(),
                reason,
            })?;
        if b.calibration.len() != b.config.horizon * b.config.nq() {
            return Err(ForecastError::Mismatch {
                path: p,
                reason: "calibration length does not match horizon x quantiles".into(),
            });
        }
        check_calibration(&b.calibration).map_err(|reason| ForecastError::Mismatch {
            path: p.clone(),
            reason,
        })?;
        Ok(Self {
            config: b.config,
            weights: b.weights,
            calibration: b.calibration,
            fallback: Ets::default(),
            clamped: Default::default(),
            quiet: Default::default(),
            recurrent: Default::default(),
        })
    }

    /// Forecast values this model (and its clones) clamped to
    /// [`crate::limits::FORECAST_MAX_MULTIPLE`] × the series' recent maximum.
    pub fn clamped(&self) -> u64 {
        self.clamped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Check a loaded model fits how the caller will use it.
    pub fn expect(
        &self,
        bucket_ms: i64,
        horizon: usize,
        origin: &str,
    ) -> Result<(), ForecastError> {
        if self.config.bucket_ms != bucket_ms || self.config.horizon < horizon {
            return Err(ForecastError::Mismatch {
                path: origin.to_string(),
                reason: format!(
                    "trained for bucket {} ms / horizon {}, asked for {} ms / {}",
                    self.config.bucket_ms, self.config.horizon, bucket_ms, horizon
                ),
            });
        }
        Ok(())
    }
}

/// Calibration factors must be finite and inside the range training clamps
/// them to: an edited factor of 1e30 would stretch every interval to
/// absurdity (the checksum only proves the file was not changed by accident).
fn check_calibration(k: &[f32]) -> Result<(), String> {
    let (lo, hi) = crate::limits::CALIBRATION_RANGE;
    // a little slack: factors are stored as f32 after an f64 clamp
    match k
        .iter()
        .position(|x| !x.is_finite() || *x < lo * 0.999 || *x > hi * 1.001)
    {
        Some(i) => Err(format!(
            "calibration factor {i} is {}, outside [{lo}, {hi}]",
            k[i]
        )),
        None => Ok(()),
    }
}

/// Clamp every value above [`crate::limits::FORECAST_MAX_MULTIPLE`] × the
/// recent maximum of `y` (up to a week of seasons, at least 1) and say how
/// many were clamped.
fn clamp_to_recent(values: &mut [Vec<f64>], y: &[f64], season: usize) -> u64 {
    // The maximum is at least 1, so values within the multiple of 1 stand
    // whatever the history holds (and the history need not be read).
    let floor = crate::limits::FORECAST_MAX_MULTIPLE;
    if values.iter().flatten().all(|v| *v <= floor) {
        return 0;
    }
    let recent = &y[y.len().saturating_sub(7 * season.max(1))..];
    let max = recent
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max);
    let cap = crate::limits::FORECAST_MAX_MULTIPLE * max;
    let mut n = 0;
    for v in values.iter_mut().flatten() {
        if *v > cap {
            *v = cap;
            n += 1;
        }
    }
    n
}

#[derive(Serialize, Deserialize)]
struct Body {
    config: LstmConfig,
    weights: Weights,
    calibration: Vec<f32>,
}

impl Body {
    fn digest(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(bytes))
    }
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    format: String,
    version: u32,
    sha256: String,
    body: Body,
}

/// Linear interpolation of trained quantile rows at other levels inside the
/// trained range.
fn interpolate(trained: &[f64], row: &[f64], want: &[f64]) -> Vec<f64> {
    want.iter()
        .map(|&q| {
            let j = trained
                .iter()
                .position(|&t| t >= q - 1e-12)
                .unwrap_or(trained.len() - 1);
            if (trained[j] - q).abs() < 1e-12 || j == 0 {
                return row[j];
            }
            let (t0, t1) = (trained[j - 1], trained[j]);
            let w = (q - t0) / (t1 - t0);
            row[j - 1] * (1.0 - w) + row[j] * w
        })
        .collect()
}

impl Forecaster for LstmForecaster {
    fn name(&self) -> &str {
        "lstm"
    }

    fn forecast(&self, history: &History<'_>, horizon: usize, quantiles: &[f64]) -> Forecast {
        let raw = self
            .usable(history, horizon, quantiles)
            .then(|| self.raw(history.values, history.start))
            .flatten();
        self.answer(history, raw, horizon, quantiles)
    }

    /// The recurrences of the histories the memos do not answer run as one
    /// batch (see [`recur_batch`]); each answer is the one alone.
    fn forecast_batch(
        &self,
        hs: &[History<'_>],
        horizon: usize,
        quantiles: &[f64],
    ) -> Vec<Forecast> {
        let asked: Vec<Option<&History<'_>>> = hs
            .iter()
            .map(|h| self.usable(h, horizon, quantiles).then_some(h))
            .collect();
        let raws = self.raw_batch_cpu(&asked);
        hs.iter()
            .zip(raws)
            .map(|(h, raw)| self.answer(h, raw, horizon, quantiles))
            .collect()
    }

    /// Quiet inputs (see [`quiet_origin`]) differ only by their calendar
    /// features; the answer's clamp to the recent maximum keeps a zero a
    /// zero and never reaches the memo. Not quiet where the fallback answers.
    fn quiet_ahead(&self, history: &History<'_>, horizon: usize, quantiles: &[f64]) -> Option<u64> {
        if !self.usable(history, horizon, quantiles) {
            return None;
        }
        Some(quiet_run(history.values, history.start, &self.config)).filter(|&k| k > 0)
    }
}

impl LstmForecaster {
    /// The forecast of `history` from the network's `raw` answer, or the
    /// statistical fallback's where the network did not answer.
    fn answer(
        &self,
        history: &History<'_>,
        raw: Option<Raw>,
        horizon: usize,
        quantiles: &[f64],
    ) -> Forecast {
        let Some((z, last, scale)) = raw else {
            return self.fallback.forecast(history, horizon, quantiles);
        };
        let cfg = &self.config;
        let mut values: Vec<Vec<f64>> = self
            .denormalise(&z, last, scale)
            .into_iter()
            .take(horizon)
            .map(|r| interpolate(&cfg.quantiles, &r, quantiles))
            .collect();
        super::tidy_rows(&mut values);
        let n = clamp_to_recent(&mut values, history.values, cfg.season);
        if n > 0 {
            self.clamped
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        Forecast {
            quantiles: quantiles.to_vec(),
            values,
        }
    }

    /// Whether the network answers (else the statistical fallback does):
    /// the bucket it was trained on, a horizon and levels within its own.
    fn usable(&self, history: &History<'_>, horizon: usize, quantiles: &[f64]) -> bool {
        let cfg = &self.config;
        let in_range = quantiles
            .iter()
            .all(|&q| q >= cfg.quantiles[0] - 1e-12 && q <= cfg.quantiles[cfg.nq() - 1] + 1e-12);
        history.bucket_ms == cfg.bucket_ms
            && horizon <= cfg.horizon
            && in_range
            && check_quantiles(quantiles).is_ok()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn shipped_model() -> LstmForecaster {
        let shipped = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/lstm/model.json"
        ));
        LstmForecaster::from_checkpoint(shipped, "models/lstm/model.json").unwrap()
    }

    /// A batch answers each history as a fresh model (a clone: empty
    /// memos) answers it alone, bit for bit: busy histories of different
    /// lengths and levels (through the batched recurrence), a quiet one, an
    /// empty window with busy seasonal lags (the memos), one too short for
    /// the network (the fallback), and a level the network was not trained
    /// for (the fallback for all). The plain kernel gives the AVX2 one's.
    #[test]
    fn a_batch_forecasts_each_history_as_alone() {
        let m = shipped_model();
        let (week, start) = (7 * 288, 1_262_304_000_000);
        let busy: Vec<f64> = (0..week)
            .map(|i| 40.0 + 30.0 * ((i % 97) as f64).sin())
            .collect();
        let burst: Vec<f64> = (0..2 * week)
            .map(|i| if i % 500 < 60 { 256.0 } else { 3.0 })
            .collect();
        let mut lags = vec![0.0; week + 100];
        lags[week + 100 - 288] = 7.0;
        let quiet = vec![0.0; week];
        let short = vec![5.0; 20];
        let series: [&[f64]; 6] = [&busy, &burst, &lags, &quiet, &short, &busy[..week - 7]];
        let hs: Vec<History<'_>> = series
            .iter()
            .map(|v| History {
                key: "e",
                start,
                bucket_ms: 300_000,
                values: v,
            })
            .collect();
        for q in [vec![0.1, 0.5, 0.9], vec![0.01, 0.5]] {
            let batch = m.forecast_batch(&hs, 12, &q);
            let alone: Vec<Forecast> = hs.iter().map(|h| m.clone().forecast(h, 12, &q)).collect();
            assert_eq!(format!("{batch:?}"), format!("{alone:?}"));
        }
        let windows: Vec<Vec<f32>> = [&busy[..], &burst[..]]
            .iter()
            .map(|v| inputs(v, start, &m.config).unwrap().steps)
            .collect();
        let refs: Vec<&[f32]> = windows.iter().map(|w| &w[..]).collect();
        let states = recur_batch(&m.weights, &m.config, &refs);
        for (w, s) in windows.iter().zip(states.chunks_exact(m.config.hidden)) {
            assert_eq!(recur(&m.weights, &m.config, w), s);
        }
        let mut plain = vec![0.5f32; 2 * 4 * m.config.hidden];
        let mut fast = plain.clone();
        let x: Vec<f32> = (0..2 * STEP_FEATURES)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        gemm_acc_plain(&x, STEP_FEATURES, &m.weights.wx, &mut plain);
        gemm_acc(&x, STEP_FEATURES, &m.weights.wx, &mut fast);
        assert_eq!(plain, fast);
    }

    /// Inputs that read only zeros are answered from the memo with the
    /// very forecast a fresh model (a clone: empty memo) computes, a week
    /// later too; inputs that read a value are not quiet.
    #[test]
    fn quiet_inputs_forecast_the_same_from_the_memo() {
        let m = shipped_model();
        let week = 7 * 288;
        let mut y = vec![0.0; 3 * week];
        // Far back: outside the window and every seasonal lag read below.
        y[10] = 8.0;
        let q = [0.1, 0.5, 0.9];
        for cut in [week + 100, 2 * week + 100, 2 * week + 101, 3 * week] {
            let h = History {
                key: "e",
                start: 1_262_304_000_000,
                bucket_ms: 300_000,
                values: &y[..cut],
            };
            assert!(quiet_origin(h.values, h.start, &m.config).is_some());
            let warm = m.forecast(&h, 12, &q);
            let fresh = m.clone().forecast(&h, 12, &q);
            assert_eq!(format!("{warm:?}"), format!("{fresh:?}"));
        }
        // week + 100 and 2 weeks + 100 share their time of the week.
        assert_eq!(m.quiet.0.lock().unwrap().len(), 3);
        assert!(quiet_origin(&y[..40], 0, &m.config).is_none());
        assert!(quiet_origin(&y[..10 + 288], 0, &m.config).is_none());
    }

    /// An empty window whose seasonal lags read demand: the hidden state
    /// comes from the memo (one per time of the week), and the output is
    /// the plain forward pass's, bit for bit.
    #[test]
    fn an_empty_window_reuses_the_hidden_state() {
        let m = shipped_model();
        let (week, start) = (7 * 288, 1_262_304_000_000);
        let mut y = vec![0.0; 3 * week];
        let cuts = [week + 100, 2 * week + 100];
        for (i, cut) in cuts.into_iter().enumerate() {
            y[cut - 288] = 5.0 + i as f64;
            y[cut - 3 * 288 + 4] = 2.0;
        }
        for cut in cuts {
            let v = &y[..cut];
            assert!(quiet_window(v, start, &m.config).is_some());
            assert!(quiet_origin(v, start, &m.config).is_none());
            let inp = inputs(v, start, &m.config).unwrap();
            let direct = forward_one(&m.weights, &m.config, &inp.steps, &inp.extra);
            assert_eq!(m.raw(v, start).unwrap().0, direct);
        }
        assert_eq!(m.recurrent.0.lock().unwrap().len(), 1);
        assert!(quiet_window(&y[..week + 100 - 287], start, &m.config).is_none());
    }

    /// `quiet_run` counts exactly the quiet origins ahead: checked origin by
    /// origin with zeros appended, for blips at many distances.
    #[test]
    fn quiet_run_matches_origin_by_origin() {
        let cfg = LstmConfig::default();
        let start = 1_262_304_000_000;
        let week = 7 * 288;
        for (len, blips) in [
            (3 * week, vec![3 * week - 60]),
            (3 * week, vec![3 * week - 300, 3 * week - 1000]),
            (2 * week, vec![2 * week - 290, 5]),
            (week + 50, vec![]),
            (2 * week, vec![2 * week - 2 * 288 + 4, 2 * week - 49]),
        ] {
            let mut y = vec![0.0; len];
            for b in blips {
                y[b] = 3.5;
            }
            let run = quiet_run(&y, start, &cfg);
            let mut ext = y.clone();
            let mut seen = 0u64;
            while seen < 9 * 288 && quiet_origin(&ext, start, &cfg).is_some() {
                seen += 1;
                ext.push(0.0);
            }
            let want = if seen == 9 * 288 { u64::MAX } else { seen };
            assert_eq!(run, want, "blips in a series of {len}");
        }
    }

    #[test]
    fn fast_tanh_is_within_an_ulp() {
        let mut x = -12.0f32;
        let mut worst = 0u64;
        while x < 12.0 {
            for v in [x, x * 1e-3, x * 1e-6] {
                let want = f64::from(v).tanh() as f32;
                let got = tanh_f(v);
                let ulps = (i64::from(got.to_bits()) - i64::from(want.to_bits())).unsigned_abs();
                worst = worst.max(ulps);
            }
            x += 0.000_37;
        }
        assert!(worst <= 1, "{worst} ulps");
    }

    pub(crate) fn synthetic(n: usize, bucket_ms: i64, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let m = season_buckets(bucket_ms) as f64;
        let mut level = 100.0;
        (0..n)
            .map(|i| {
                level = (level + rng.random_range(-3.0..3.0_f64)).clamp(20.0, 300.0);
                let day = (std::f64::consts::TAU * i as f64 / m).sin();
                (level + 40.0 * day).max(0.0)
            })
            .collect()
    }

    fn tiny_cfg() -> LstmConfig {
        LstmConfig {
            window: 12,
            hidden: 8,
            head_hidden: 8,
            horizon: 4,
            bucket_ms: 3_600_000,
            season: 24,
            epochs: 2,
            steps_per_epoch: 6,
            batch: 8,
            ..LstmConfig::default()
        }
    }

    fn trained() -> (LstmForecaster, Vec<f64>) {
        let cfg = tiny_cfg();
        let v = synthetic(24 * 10, cfg.bucket_ms, 7);
        let h = History {
            key: "ce/vcpus",
            start: 0,
            bucket_ms: cfg.bucket_ms,
            values: &v,
        };
        let (m, rep) = train(&[h], &cfg, DeviceChoice::Cpu, &mut |_| {}).unwrap();
        assert_eq!(rep.steps, 12);
        (m, v)
    }

    #[test]
    fn monotone_matrix_never_crosses() {
        let cfg = LstmConfig {
            quantiles: vec![0.05, 0.1, 0.5, 0.9, 0.95],
            ..tiny_cfg()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let w = Weights::init(&cfg, &mut rng);
        let steps: Vec<f32> = (0..cfg.window * STEP_FEATURES)
            .map(|_| rng.random_range(-3.0..3.0))
            .collect();
        let extra: Vec<f32> = (0..cfg.extra())
            .map(|_| rng.random_range(-3.0..3.0))
            .collect();
        let z = forward_one(&w, &cfg, &steps, &extra);
        for row in z.chunks_exact(5) {
            assert!(row.windows(2).all(|p| p[0] < p[1]), "{row:?}");
        }
    }

    #[test]
    fn plain_path_matches_burn() {
        let (m, v) = trained();
        let h = History {
            key: "k",
            start: 0,
            bucket_ms: m.config.bucket_ms,
            values: &v[..100],
        };
        let burn = m
            .burn_forward(&[h], &burn_device(DeviceChoice::Cpu).unwrap())
            .unwrap();
        let (plain, _, _) = m.raw(h.values, h.start).unwrap();
        assert_eq!(burn.len(), plain.len());
        for (a, b) in burn.iter().zip(&plain) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn quantiles_do_not_cross_and_fallback_on_short_history() {
        let (m, v) = trained();
        let h = History {
            key: "k",
            start: 0,
            bucket_ms: m.config.bucket_ms,
            values: &v,
        };
        let f = m.forecast(&h, 4, &[0.1, 0.5, 0.9]);
        assert_eq!(f.values.len(), 4);
        for r in &f.values {
            assert!(r[0] <= r[1] && r[1] <= r[2], "{r:?}");
        }
        // interpolated level inside the trained range
        let f2 = m.forecast(&h, 4, &[0.25, 0.5]);
        assert!(f2.values[0][0] <= f2.values[0][1]);
        // shorter than the window → statistical fallback, still a forecast
        let short = History {
            values: &v[..3],
            ..h
        };
        assert_eq!(m.forecast(&short, 4, &[0.5]).values.len(), 4);
    }

    #[test]
    fn checkpoint_round_trip_is_identical() {
        let (m, v) = trained();
        let back = LstmForecaster::from_checkpoint(&m.to_checkpoint(), "m").unwrap();
        assert_eq!(back.weights, m.weights);
        assert_eq!(back.calibration, m.calibration);
        let h = History {
            key: "k",
            start: 0,
            bucket_ms: m.config.bucket_ms,
            values: &v,
        };
        assert_eq!(
            m.forecast(&h, 4, &[0.1, 0.5, 0.9]),
            back.forecast(&h, 4, &[0.1, 0.5, 0.9])
        );
    }

    #[test]
    fn corrupt_checkpoint_is_a_typed_error() {
        let (m, _) = trained();
        let text = String::from_utf8(m.to_checkpoint()).unwrap();
        let read = |t: &str| LstmForecaster::from_checkpoint(t.as_bytes(), "m.json");
        // truncated
        assert!(matches!(
            read(&text[..text.len() / 2]),
            Err(ForecastError::Corrupt { .. })
        ));
        // one weight changed: checksum catches it
        let edited = text.replacen("\"wx\":[", "\"wx\":[9.5,", 1);
        assert!(matches!(read(&edited), Err(ForecastError::Corrupt { .. })));
        // wrong bucket width for the caller
        assert!(matches!(
            m.expect(300_000, 4, "m.json"),
            Err(ForecastError::Mismatch { .. })
        ));
    }

    /// Issue #21: a horizon longer than one season of buckets indexed past
    /// the history in the seasonal-lag features (a panic).
    #[test]
    fn horizon_longer_than_a_season_forecasts() {
        let cfg = LstmConfig {
            horizon: 30, // > season 24
            epochs: 1,
            steps_per_epoch: 2,
            ..tiny_cfg()
        };
        let v = synthetic(24 * 12, cfg.bucket_ms, 3);
        let h = History {
            key: "ce/vcpus",
            start: 0,
            bucket_ms: cfg.bucket_ms,
            values: &v,
        };
        let (m, _) = train(&[h], &cfg, DeviceChoice::Cpu, &mut |_| {}).unwrap();
        let f = m.forecast(&h, 30, &[0.1, 0.5, 0.9]);
        assert_eq!(f.values.len(), 30);
        assert!(f.values.iter().flatten().all(|x| x.is_finite()));
        // the lags used are whole seasons back and observed: step 25 (one
        // season and one bucket ahead) looks two seasons back
        let inp = inputs(&v, 0, &cfg).unwrap();
        let n = v.len();
        let last = v[n - 1];
        let scale = v[n - cfg.window..].iter().sum::<f64>() / cfg.window as f64;
        let want = ((v[n + 25 - 1 - 48] - last) / scale).clamp(-50.0, 50.0) as f32;
        assert_eq!(inp.extra[2 * 24], want);
        // a season of 1 bucket (the extreme) does not index out either
        let one = LstmConfig {
            season: 1,
            ..cfg.clone()
        };
        assert!(inputs(&v, 0, &one).is_some());
    }

    fn rewrite_checkpoint(bytes: &[u8], edit: impl FnOnce(&mut Body)) -> Vec<u8> {
        let mut ck: Checkpoint = serde_json::from_slice(bytes).unwrap();
        edit(&mut ck.body);
        ck.sha256 = ck.body.digest();
        serde_json::to_vec(&ck).unwrap()
    }

    /// Issue #21: an edited checkpoint (checksum recomputed) with absurd
    /// calibration or weights is refused at load, not forecast from.
    #[test]
    fn absurd_checkpoint_is_refused_and_output_is_bounded() {
        let (m, v) = trained();
        type Edit = Box<dyn FnOnce(&mut Body)>;
        let cases: [(&str, Edit); 4] = [
            (
                "calibration",
                Box::new(|b: &mut Body| b.calibration[0] = 1e30),
            ),
            (
                "calibration",
                Box::new(|b: &mut Body| b.calibration[1] = -2.0),
            ),
            ("weight", Box::new(|b: &mut Body| b.weights.b2[0] = 1e9)),
            (
                "above the limit",
                Box::new(|b| b.config.hidden = usize::MAX / 2),
            ),
        ];
        for (what, edit) in cases {
            let edited = rewrite_checkpoint(&m.to_checkpoint(), edit);
            let e = LstmForecaster::from_checkpoint(&edited, "m.json")
                .unwrap_err()
                .to_string();
            assert!(e.contains(what) && e.contains("m.json"), "{e}");
        }
        // weights that pass the checks but push the output far up: clamped
        // to the documented multiple of the recent max, and counted
        let mut big = m.clone();
        big.weights.b2.iter_mut().for_each(|b| *b = 9_000.0);
        let h = History {
            key: "k",
            start: 0,
            bucket_ms: m.config.bucket_ms,
            values: &v,
        };
        let f = big.forecast(&h, 4, &[0.1, 0.5, 0.9]);
        let recent = v[v.len() - 7 * 24..].iter().copied().fold(1.0, f64::max);
        let cap = crate::limits::FORECAST_MAX_MULTIPLE * recent;
        assert!(f.values.iter().flatten().all(|&x| x <= cap), "{f:?}");
        let clamped = big.clamped();
        assert!(clamped > 0);
        // a sane model on the same history clamps nothing (the counter is
        // shared by clones, so it stays where the poisoned one left it)
        assert_eq!(m.forecast(&h, 4, &[0.5]).values.len(), 4);
        assert_eq!(m.clamped(), clamped);
    }

    #[test]
    fn gpu_without_feature_is_an_error() {
        if cfg!(not(feature = "gpu")) {
            assert!(matches!(
                burn_device(DeviceChoice::Gpu),
                Err(ForecastError::DeviceUnavailable(_))
            ));
        }
    }
}
