//! Fitting the trained detectors' weights: standardisation, logistic regression and
//! a one-hidden-layer MLP (Adam, deterministic for a seed), and how a window is
//! labelled from the events it overlaps. Training-time code; what the daemon runs is
//! in [`crate::detect::trained`].

use crate::detect::trained::{sigmoid, Hidden};

/// Per-dimension mean and 1/std (1 where a dimension is constant).
pub fn standardisation<R: AsRef<[f32]>>(x: &[R]) -> (Vec<f32>, Vec<f32>) {
    let d = x.first().map_or(0, |r| r.as_ref().len());
    let n = x.len().max(1) as f64;
    let mut mean = vec![0f64; d];
    for row in x {
        for (m, &v) in mean.iter_mut().zip(row.as_ref()) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0f64; d];
    for row in x {
        for ((s, &v), &m) in var.iter_mut().zip(row.as_ref()).zip(&mean) {
            *s += (v as f64 - m).powi(2);
        }
    }
    let scale = var
        .iter()
        .map(|&s| {
            let sd = (s / n).sqrt();
            if sd > 1e-8 {
                (1.0 / sd) as f32
            } else {
                1.0
            }
        })
        .collect();
    (mean.into_iter().map(|m| m as f32).collect(), scale)
}

/// Adam (β₁ 0.9, β₂ 0.999) over weights and one bias: what the linear fits here
/// descend with.
pub(crate) struct Adam {
    lr: f64,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Adam {
    /// For `weights` weights and a bias, with step `lr`.
    pub(crate) fn new(weights: usize, lr: f64) -> Adam {
        Adam {
            lr,
            m: vec![0.0; weights + 1],
            v: vec![0.0; weights + 1],
            t: 0,
        }
    }

    /// One step of `w` and `b` down the gradient `g` (the weights', then the
    /// bias'), after adding an L2 penalty `l2` on the weights to it.
    pub(crate) fn step(&mut self, w: &mut [f64], b: &mut f64, g: &mut [f64], l2: f64) {
        let (b1, b2, eps) = (0.9, 0.999, 1e-8);
        let d = w.len();
        for (gi, wi) in g.iter_mut().zip(w.iter()) {
            *gi += l2 * wi;
        }
        self.t += 1;
        for i in 0..=d {
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g[i] * g[i];
            let mh = self.m[i] / (1.0 - b1.powi(self.t));
            let vh = self.v[i] / (1.0 - b2.powi(self.t));
            let step = self.lr * mh / (vh.sqrt() + eps);
            if i < d {
                w[i] -= step;
            } else {
                *b -= step;
            }
        }
    }
}

/// Fits `sigmoid(b + w·z)` to labels `y` on standardised rows `z` by full-batch
/// gradient descent with L2 penalty `l2` on `w`, positives and negatives weighted
/// to count equally. Deterministic (no randomness at all).
pub fn fit_logistic<R: AsRef<[f32]>>(
    z: &[R],
    y: &[bool],
    l2: f64,
    iterations: usize,
) -> (Vec<f32>, f32) {
    let d = z.first().map_or(0, |r| r.as_ref().len());
    let pos = y.iter().filter(|&&v| v).count().max(1) as f64;
    let neg = (y.len() as f64 - pos).max(1.0);
    let (wp, wn) = (0.5 / pos, 0.5 / neg);
    let mut w = vec![0f64; d];
    let mut b = 0f64;
    // Adam: robust to the scale of the problem without a tuned step.
    let mut adam = Adam::new(d, 0.05);
    let mut g = vec![0f64; d + 1];
    for _ in 0..iterations {
        g.iter_mut().for_each(|x| *x = 0.0);
        for (row, &label) in z.iter().zip(y) {
            let row = row.as_ref();
            let s = b + row
                .iter()
                .zip(&w)
                .map(|(&x, &wi)| x as f64 * wi)
                .sum::<f64>();
            let (target, weight) = if label { (1.0, wp) } else { (0.0, wn) };
            let err = (sigmoid(s) - target) * weight;
            for (gi, &x) in g.iter_mut().zip(row) {
                *gi += err * x as f64;
            }
            g[d] += err;
        }
        adam.step(&mut w, &mut b, &mut g, l2);
    }
    (w.into_iter().map(|x| x as f32).collect(), b as f32)
}

/// Fits a one-hidden-layer network `sigmoid(b + w · relu(B + W z))` with `units`
/// hidden units to labels `y` on standardised rows `z`: minibatch Adam over
/// `epochs` passes, L2 penalty `l2` on the weights, positives and negatives
/// weighted to count equally. Deterministic given `seed`.
pub fn fit_mlp<R: AsRef<[f32]>>(
    z: &[R],
    y: &[bool],
    l2: f64,
    units: usize,
    epochs: usize,
    seed: u64,
) -> (Hidden, Vec<f32>, f32) {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    let d = z.first().map_or(0, |r| r.as_ref().len());
    let n = z.len();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // He-uniform initialisation; a small output layer.
    let lim1 = (6.0 / d.max(1) as f32).sqrt();
    let lim2 = (1.0 / units.max(1) as f32).sqrt();
    // Parameters in one vector: W (units × d), B (units), w (units), b.
    let (ow, ob, ov) = (0, units * d, units * d + units);
    let last = ov + units;
    let mut p = vec![0f32; last + 1];
    // An input that is 0 in every row (a masked column) keeps weight 0: it gets no
    // gradient, and a random weight there would meet real values in the daemon.
    let mut active = vec![false; d];
    for row in z {
        for (a, &x) in active.iter_mut().zip(row.as_ref()) {
            *a |= x != 0.0;
        }
    }
    for (i, v) in p[..ob].iter_mut().enumerate() {
        let w = rng.gen_range(-lim1..lim1);
        if active[i % d.max(1)] {
            *v = w;
        }
    }
    for v in &mut p[ov..last] {
        *v = rng.gen_range(-lim2..lim2);
    }
    let pos = y.iter().filter(|&&v| v).count().max(1) as f32;
    let neg = (n as f32 - pos).max(1.0);
    let (wp, wn) = (0.5 / pos, 0.5 / neg);
    let (lr, b1, b2, eps) = (3e-3f32, 0.9f32, 0.999f32, 1e-8f32);
    let mut m = vec![0f32; p.len()];
    let mut v = vec![0f32; p.len()];
    let mut g = vec![0f32; p.len()];
    let mut h = vec![0f32; units];
    let mut order: Vec<usize> = (0..n).collect();
    let batch = 256usize;
    let mut t = 0i32;
    for _ in 0..epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(batch) {
            g.iter_mut().for_each(|x| *x = 0.0);
            // Scaled so a batch's gradient estimates the full one.
            let k = n as f32 / chunk.len() as f32;
            for &r in chunk {
                let x = z[r].as_ref();
                let mut s = p[last];
                for j in 0..units {
                    let row = &p[ow + j * d..ow + (j + 1) * d];
                    let a = p[ob + j] + row.iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
                    h[j] = a;
                    s += p[ov + j] * a.max(0.0);
                }
                let (target, weight) = if y[r] { (1.0, wp) } else { (0.0, wn) };
                let err = (sigmoid(s as f64) as f32 - target) * weight * k;
                g[last] += err;
                for j in 0..units {
                    if h[j] <= 0.0 {
                        continue;
                    }
                    g[ov + j] += err * h[j];
                    let delta = err * p[ov + j];
                    g[ob + j] += delta;
                    for (gi, &xi) in g[ow + j * d..ow + (j + 1) * d].iter_mut().zip(x) {
                        *gi += delta * xi;
                    }
                }
            }
            for i in (ow..ob).chain(ov..last) {
                g[i] += l2 as f32 * p[i];
            }
            t += 1;
            let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            for i in 0..p.len() {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                p[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
            }
        }
    }
    (
        Hidden {
            weights: p[ow..ob].to_vec(),
            bias: p[ob..ov].to_vec(),
        },
        p[ov..last].to_vec(),
        p[last],
    )
}

/// Whether a window `[start_s, end_s]` holds enough of an event `[onset, offset]` to
/// count as a positive: `Some(true)` with at least `min_overlap_s` of it (or all of
/// a shorter event), `Some(false)` with none, `None` (left out of training) between.
pub fn window_label(
    start_s: f64,
    end_s: f64,
    onset_s: f64,
    offset_s: f64,
    min_overlap_s: f64,
) -> Option<bool> {
    let overlap = end_s.min(offset_s) - start_s.max(onset_s);
    if overlap <= 0.0 {
        Some(false)
    } else if overlap >= min_overlap_s.min(offset_s - onset_s) {
        Some(true)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::trained::LinearDetector;

    fn det(w: Vec<f32>, b: f32) -> LinearDetector {
        LinearDetector::for_test(w, b)
    }

    #[test]
    fn logistic_regression_separates_separable_data_deterministically() {
        // Positives have x0 > 0.5; x1 is noise.
        let z: Vec<Vec<f32>> = (0..200)
            .map(|i| {
                vec![
                    (i as f32 / 100.0) - 1.0,
                    ((i * 37) % 11) as f32 / 11.0 - 0.5,
                ]
            })
            .collect();
        let y: Vec<bool> = z.iter().map(|r| r[0] > 0.5).collect();
        let (w, b) = fit_logistic(&z, &y, 1e-4, 400);
        let acc = z
            .iter()
            .zip(&y)
            .filter(|(r, &l)| (sigmoid(b as f64 + (r[0] * w[0] + r[1] * w[1]) as f64) > 0.5) == l)
            .count();
        // Balanced class weights put the boundary near x0 = 0.5, a few points either side.
        assert!(acc >= 185, "{acc}/200");
        assert!(w[0] > 1.0 && w[1].abs() < w[0].abs() / 5.0, "{w:?}");
        let boundary = -b / w[0];
        assert!((0.3..0.6).contains(&boundary), "{boundary}");
        assert_eq!(fit_logistic(&z, &y, 1e-4, 400), (w, b));
    }

    #[test]
    fn an_mlp_learns_what_a_line_cannot_deterministically() {
        // XOR-like: positive when x0 and x1 share a sign.
        let z: Vec<Vec<f32>> = (0..400)
            .map(|i| {
                let a = ((i * 37) % 101) as f32 / 50.0 - 1.0;
                let b = ((i * 53) % 97) as f32 / 48.0 - 1.0;
                vec![a, b]
            })
            .collect();
        let y: Vec<bool> = z.iter().map(|r| r[0] * r[1] > 0.0).collect();
        let (h, w, b) = fit_mlp(&z, &y, 1e-4, 8, 300, 7);
        let mut d = det(w, b);
        (d.embedding_dim, d.mean, d.scale) = (2, vec![0.0; 2], vec![1.0; 2]);
        d.hidden = Some(h.clone());
        d.validate("t").unwrap();
        let acc = z
            .iter()
            .zip(&y)
            .filter(|(r, &l)| (d.score(r) > 0.5) == l)
            .count();
        assert!(acc >= 340, "{acc}/400");
        assert_eq!(fit_mlp(&z, &y, 1e-4, 8, 300, 7).0, h);
        // A column that is always 0 gets no weight.
        let z3: Vec<Vec<f32>> = z.iter().map(|r| vec![r[0], 0.0, r[1]]).collect();
        let (h3, _, _) = fit_mlp(&z3, &y, 1e-4, 8, 20, 7);
        assert!(h3.weights.chunks(3).all(|row| row[1] == 0.0));
    }

    #[test]
    fn standardisation_centres_and_scales() {
        let x = vec![vec![1.0, 5.0], vec![3.0, 5.0]];
        let (m, s) = standardisation(&x);
        assert_eq!(m, [2.0, 5.0]);
        assert_eq!(s, [1.0, 1.0]); // sd 1; constant column keeps scale 1
    }

    #[test]
    fn windows_are_labelled_by_overlap() {
        assert_eq!(window_label(0.0, 10.0, 12.0, 13.0, 0.5), Some(false));
        assert_eq!(window_label(0.0, 10.0, 9.8, 11.0, 0.5), None);
        assert_eq!(window_label(0.0, 10.0, 9.0, 11.0, 0.5), Some(true));
        // An event shorter than the minimum counts when it is wholly inside.
        assert_eq!(window_label(0.0, 10.0, 4.0, 4.2, 0.5), Some(true));
    }
}
