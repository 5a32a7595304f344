//! The Rust frontends and the whole chain against the reference golden vectors in
//! `shared/models/*/golden`.

mod common;

use common::{max_abs_diff, model, npy, shared};
use hearken::dsp::LogMel;

fn logmel(m: &hearken::model::Model, wave: &[f32]) -> Vec<f32> {
    let mut fe = LogMel::new(&m.manifest().frontend);
    let mut out = Vec::new();
    for c in wave.chunks(4000) {
        fe.push(c, &mut out);
    }
    fe.finish(&mut out);
    out
}

#[test]
fn mn04_frontend_and_probs_match_golden() {
    let m = model("efficientat-mn04");
    let dir = shared().join("models/efficientat-mn04/golden");
    for clip in ["gunshots", "dog"] {
        let (_, wave) = npy(&dir.join(format!("{clip}_wave32k.npy")));
        let (shape, gold_mel) = npy(&dir.join(format!("{clip}_mel.npy")));
        assert_eq!(shape, vec![128, 1000]);
        let ours = logmel(&m, &wave); // frame-major [1000][128]
        assert_eq!(ours.len(), 128 * 1000);
        let mut ours_t = vec![0.0f32; ours.len()];
        for t in 0..1000 {
            for b in 0..128 {
                ours_t[b * 1000 + t] = ours[t * 128 + b];
            }
        }
        let d = max_abs_diff(&ours_t, &gold_mel);
        eprintln!("{clip}: mn04 log-mel max |diff| = {d:e}");
        assert!(d <= 1e-3, "{clip}: log-mel differs by {d}");

        let out = m.run_window(&ours).unwrap();
        // The daemon lets the parsed graph go once its plans are built: a shape
        // it has not seen then parses the file again, to the same numbers.
        let half = &ours[..128 * 500];
        let fresh = model("efficientat-mn04").run_window(half).unwrap();
        m.release_graph();
        let again = m.run_window(half).unwrap();
        assert_eq!(fresh.scores, again.scores);
        let (_, gold_probs) = npy(&dir.join(format!("{clip}_probs.npy")));
        let d = max_abs_diff(&out.scores, &gold_probs);
        eprintln!("{clip}: mn04 probs max |diff| = {d:e}");
        assert!(d <= 2e-3, "{clip}: probs differ by {d}");
        let (_, gold_emb) = npy(&dir.join(format!("{clip}_embedding.npy")));
        assert!(max_abs_diff(&out.embedding, &gold_emb) <= 2e-3);
    }
}

#[test]
fn yamnet_frontend_and_scores_match_golden() {
    let m = model("yamnet");
    let dir = shared().join("models/yamnet/golden");
    for clip in ["gunshots", "dog"] {
        let (_, wave) = npy(&dir.join(format!("{clip}_wave16k.npy")));
        let (shape, gold) = npy(&dir.join(format!("{clip}_logmel.npy")));
        assert_eq!(shape, vec![998, 64]);
        let ours = logmel(&m, &wave);
        let d = max_abs_diff(&ours, &gold);
        eprintln!("{clip}: yamnet log-mel max |diff| = {d:e}");
        assert!(d <= 1e-3, "{clip}: log-mel differs by {d}");

        let (sshape, gold_scores) = npy(&dir.join(format!("{clip}_scores.npy")));
        let patches = sshape[0] as usize;
        let mut flat = Vec::new();
        for p in 0..patches {
            flat.extend_from_slice(&ours[p * 48 * 64..(p * 48 + 96) * 64]);
        }
        let outs = m.run_patches(&flat).unwrap();
        assert_eq!(outs.len(), patches);
        let scores: Vec<f32> = outs.iter().flat_map(|o| o.scores.iter().copied()).collect();
        let d = max_abs_diff(&scores, &gold_scores);
        eprintln!("{clip}: yamnet scores max |diff| = {d:e}");
        assert!(d <= 2e-3, "{clip}: scores differ by {d}");
    }
}
