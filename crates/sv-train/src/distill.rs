//! Knowledge distillation for a binary target.
//!
//! `L = α·T²·BCE(σ(z_s/T), σ(z_t/T)) + (1 − α)·BCE(σ(z_s), y)`, defaults `T = 4`, `α = 0.7`;
//! the teacher logit comes from a probability with clipping: `z_t = logit(clip(p, 1e-4, 1 − 1e-4))`.

use burn::tensor::Tensor;
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;

use crate::train::bce_with_logits;

/// Clip bound of teacher probabilities.
pub const TEACHER_CLIP: f32 = 1e-4;

/// Teacher logit of a probability.
pub fn teacher_logit(p: f32) -> f32 {
    let p = p.clamp(TEACHER_CLIP, 1.0 - TEACHER_CLIP);
    (p / (1.0 - p)).ln()
}

/// The distillation loss, mean over the batch.
pub fn kd_loss<B: Backend>(
    student: Tensor<B, 1>,
    teacher: Tensor<B, 1>,
    labels: Tensor<B, 1>,
    alpha: f64,
    temperature: f64,
) -> Tensor<B, 1> {
    let t = temperature;
    let soft_targets = sigmoid(teacher.div_scalar(t));
    let soft = bce_with_logits(student.clone().div_scalar(t), soft_targets);
    let hard = bce_with_logits(student, labels);
    soft.mul_scalar(alpha * t * t) + hard.mul_scalar(1.0 - alpha)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::TensorData;

    type B = Autodiff<NdArray<f32>>;

    fn sig(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }
    fn bce(p: f64, y: f64) -> f64 {
        -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
    }

    #[test]
    fn kd_loss_and_gradient_match_hand_computation() {
        let zs = [0.5f64, -1.0, 2.0];
        let zt = [2.0f64, 0.0, -3.0];
        let y = [1.0f64, 0.0, 1.0];
        let (a, t) = (0.7, 4.0);
        let n = zs.len() as f64;
        let mut want = 0.0;
        let mut grad = [0.0f64; 3];
        for i in 0..3 {
            let q = sig(zt[i] / t);
            want += (a * t * t * bce(sig(zs[i] / t), q) + (1.0 - a) * bce(sig(zs[i]), y[i])) / n;
            grad[i] = (a * t * t * (sig(zs[i] / t) - q) / t + (1.0 - a) * (sig(zs[i]) - y[i])) / n;
        }
        let dev = Default::default();
        let f = |v: &[f64]| {
            Tensor::<B, 1>::from_data(TensorData::new(v.iter().map(|x| *x as f32).collect::<Vec<_>>(), [3]), &dev)
        };
        let student = f(&zs).require_grad();
        let loss = kd_loss(student.clone(), f(&zt), f(&y), a, t);
        let got = loss.clone().into_data().to_vec::<f32>().unwrap()[0] as f64;
        assert!((got - want).abs() < 1e-5, "loss {got} vs {want}");
        let grads = loss.backward();
        let g = student.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        for i in 0..3 {
            assert!((g[i] as f64 - grad[i]).abs() < 1e-5, "grad[{i}] {} vs {}", g[i], grad[i]);
        }
    }

    #[test]
    fn teacher_logit_inverts_sigmoid_and_clips() {
        assert!((sig(teacher_logit(0.8) as f64) - 0.8).abs() < 1e-6);
        assert!((teacher_logit(1.0) - teacher_logit(1.0 - TEACHER_CLIP)).abs() < 1e-3);
        assert!(teacher_logit(0.0).is_finite() && teacher_logit(0.0) < -9.0);
    }
}
