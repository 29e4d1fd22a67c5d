"""scikit-learn pipelines for track/shower classification, their search spaces, and class balancing.

Scaling always lives inside the pipeline, so it is fitted on training folds only. SVMs get
probabilities from a Platt sigmoid fitted on out-of-fold decision values (:class:`PlattScaled`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import loguniform, randint, uniform
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

MODELS = ("linear-svc", "svc", "random-forest", "hist-gb")
BALANCING = ("undersample", "weights", "none")

# Small grids (the default, exhaustive) and wider random spaces (--search random --n-iter N).
GRIDS: dict[str, dict[str, list[Any]]] = {
    "linear-svc": {"clf__C": [0.01, 0.1, 1.0, 10.0]},
    "svc": {"clf__C": [0.3, 1.0, 3.0], "clf__gamma": ["scale", 0.01]},
    "random-forest": {"clf__n_estimators": [200], "clf__max_depth": [8, 16], "clf__min_samples_leaf": [1, 10]},
    "hist-gb": {"clf__learning_rate": [0.05, 0.1], "clf__max_leaf_nodes": [15, 31]},
}
SPACES: dict[str, dict[str, Any]] = {
    "linear-svc": {"clf__C": loguniform(1e-3, 1e2)},
    "svc": {"clf__C": loguniform(1e-1, 1e2), "clf__gamma": loguniform(1e-3, 1e-1)},
    "random-forest": {"clf__n_estimators": randint(100, 400), "clf__max_depth": randint(4, 24),
                      "clf__min_samples_leaf": randint(1, 30)},
    "hist-gb": {"clf__learning_rate": loguniform(0.02, 0.3), "clf__max_leaf_nodes": randint(8, 64),
                "clf__l2_regularization": uniform(0.0, 1.0)},
}


def make_pipeline(name: str, seed: int, params: dict[str, Any] | None = None) -> Pipeline:
    """The named model, scaler first, with ``params`` (``clf__…`` keys) applied."""
    if name == "linear-svc":
        clf: Any = LinearSVC(C=1.0, max_iter=20_000, random_state=seed)
    elif name == "svc":
        clf = SVC(kernel="rbf", C=1.0, gamma="scale", cache_size=500, random_state=seed)
    elif name == "random-forest":
        clf = RandomForestClassifier(n_estimators=200, n_jobs=1, random_state=seed)
    elif name == "hist-gb":
        clf = HistGradientBoostingClassifier(max_iter=300, early_stopping=True, random_state=seed)
    else:
        raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
    pipe = Pipeline([("scale", StandardScaler()), ("clf", clf)])
    return pipe.set_params(**(params or {}))


def needs_platt(name: str) -> bool:
    return name in ("linear-svc", "svc")


class PlattScaled:
    """An SVM pipeline plus a sigmoid mapping its decision values to P(shower).

    ``fit`` fits the sigmoid on out-of-fold decision values (``cv`` stratified folds), then the
    pipeline on all rows, so the probabilities are not fitted on the scores they are applied to.
    """

    def __init__(self, pipeline: Pipeline, cv: int = 3, seed: int = 0):
        self.pipeline = pipeline
        self.cv = cv
        self.seed = seed

    def fit(self, x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> PlattScaled:
        oof = np.empty(len(y))
        for tr, va in StratifiedKFold(self.cv, shuffle=True, random_state=self.seed).split(x, y):
            w = None if sample_weight is None else sample_weight[tr]
            part = fit_weighted(clone(self.pipeline), x[tr], y[tr], w)
            oof[va] = part.decision_function(x[va])
        self.sigmoid_ = LogisticRegression().fit(oof.reshape(-1, 1), y, sample_weight=sample_weight)
        self.pipeline_ = fit_weighted(clone(self.pipeline), x, y, sample_weight)
        self.classes_ = self.pipeline_.classes_
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return self.pipeline_.decision_function(x)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.sigmoid_.predict_proba(self.decision_function(x).reshape(-1, 1))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.pipeline_.predict(x)


def fit_weighted(model: Any, x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None) -> Any:
    """Fit a pipeline (weights go to its classifier step) or a PlattScaled model."""
    if sample_weight is None:
        return model.fit(x, y)
    if isinstance(model, PlattScaled):
        return model.fit(x, y, sample_weight=sample_weight)
    return model.fit(x, y, clf__sample_weight=sample_weight)


def shower_probability(model: Any, x: np.ndarray) -> np.ndarray:
    """P(is_shower) for each row, from any fitted model here."""
    proba = model.predict_proba(x)
    return proba[:, list(model.classes_).index(True)]


def interaction_groups(pdgid: np.ndarray, is_cc: np.ndarray) -> np.ndarray:
    """Group code per event, |pdgid| * 2 + is_cc: the (particle type, is_cc) categories that define the label.

    The split is stratified by these groups; balancing equalises the label they define (tracks =
    ν_μ CC, showers = the rest) and keeps the groups' natural shares inside each class.
    """
    return np.abs(pdgid) * 2 + is_cc.astype(np.int64)


def undersample(groups: np.ndarray, seed: int) -> np.ndarray:
    """Indices (sorted) keeping an equal number of events of every key: the rarest key's count."""
    rng = np.random.default_rng(seed)
    codes, counts = np.unique(groups, return_counts=True)
    n = counts.min()
    keep = [rng.choice(np.flatnonzero(groups == c), n, replace=False) for c in codes]  # one per group
    return np.sort(np.concatenate(keep))


def balanced_weights(groups: np.ndarray) -> np.ndarray:
    """Sample weights making every key's total weight equal (mean weight 1)."""
    codes, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    w = (len(groups) / (len(codes) * counts))[inverse]
    return w.astype(np.float64)
