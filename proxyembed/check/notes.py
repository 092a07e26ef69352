"""Notes beside the verdict: what makes the numbers less telling (coarse data, another model or machine)."""

from __future__ import annotations

from .baseline import same_bundle
from .measure import Evaluation
from .tolerances import EPS_POINTS, Tolerances, metric_names


def resolution_notes(candidate: Evaluation, tol: Tolerances) -> list[str]:
    """Warn when one query moves Recall@K by more than its limit: any single flip would then fail."""
    queries = int(candidate.data.get("queries") or 0)
    step = 100 / queries if queries else 0.0
    tight = [m for m in metric_names(candidate.ks) if m.startswith("recall@") and tol.limit(m) + EPS_POINTS < step]
    if not tight:
        return []
    return [
        f"one query moves Recall@K by {step:.2f} points here ({queries} queries), more than the limit for {', '.join(tight)}: "
        "a single changed neighbour fails the check; evaluate on more images or raise --max-drop"
    ]


def provenance_notes(candidate: Evaluation, reference: Evaluation, what: str) -> list[str]:
    """Say when the model or the execution setup differs from the reference's (numbers may then move)."""
    old, new = reference.bundle.get("manifest_sha256", ""), candidate.bundle.get("manifest_sha256", "")
    if same_bundle(reference, candidate):
        notes = [f"same bundle as the {what} (manifest sha256 {new[:12]})"]
    else:
        notes = [f"bundle differs from the {what}'s: manifest sha256 {str(old)[:12]} -> {new[:12]} (a new model)"]
    for precision, run in candidate.artifacts.items():
        ref = reference.artifacts.get(precision)
        if ref is None:
            continue
        pairs = (("provider", ref.provider, run.provider), ("threads", ref.threads, run.threads), ("batch size", ref.batch_size, run.batch_size))
        setup = [f"{name} {a} -> {b}" for name, a, b in pairs if a != b]
        if setup:
            notes.append(f"{precision}: {', '.join(setup)} since the {what}: small differences are expected (docs/check.md)")
    old_env, new_env = reference.environment, candidate.environment
    env_diff = [f"{k} {old_env.get(k)!r} -> {new_env.get(k)!r}" for k in ("cpu", "onnxruntime") if old_env.get(k) != new_env.get(k)]
    if old_env and env_diff:
        notes.append(f"machine differs from the {what}'s ({'; '.join(env_diff)}): small differences are expected (docs/check.md)")
    return notes
