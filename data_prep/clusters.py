"""Behavioural clusters: KMeans on the point-in-time aggregates, fit on the training cutoffs only.

Aggregates are counts and day spans, so they are ``log1p``-transformed and standardised before KMeans.
Profiles (size and mean of every aggregate, in original units) make the clusters readable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from data_prep import schema as S

DEFAULT_N_CLUSTERS = 6


def fit_clusters(train: pd.DataFrame, n_clusters: int = DEFAULT_N_CLUSTERS, seed: int = 0) -> Pipeline:
    """Fit on the training rows' :data:`schema.AGGREGATE_FEATURES` (one row per customer and cutoff)."""
    if len(train) < n_clusters:
        raise ValueError(f"{len(train)} training rows cannot make {n_clusters} clusters")
    model = make_pipeline(
        FunctionTransformer(np.log1p),  # aggregates are ≥ 0
        StandardScaler(),
        KMeans(n_clusters=n_clusters, n_init=10, random_state=seed),
    )
    return model.fit(train[list(S.AGGREGATE_FEATURES)].to_numpy(dtype=np.float64))


def assign_clusters(model: Pipeline, frame: pd.DataFrame) -> pd.DataFrame:
    """customer_id, cluster for every row of ``frame``."""
    labels = model.predict(frame[list(S.AGGREGATE_FEATURES)].to_numpy(dtype=np.float64))
    return pd.DataFrame({S.CUSTOMER_ID: frame[S.CUSTOMER_ID].to_numpy(), S.CLUSTER: labels.astype(np.int16)})


def cluster_profiles(frame: pd.DataFrame, clusters: pd.DataFrame) -> dict[str, Any]:
    """Per cluster: number of customers and the mean of every aggregate (original units)."""
    j = frame.merge(clusters, on=S.CUSTOMER_ID)
    means = j.groupby(S.CLUSTER)[list(S.AGGREGATE_FEATURES)].mean().round(3)
    sizes = j.groupby(S.CLUSTER).size()
    return {
        str(c): {"n_customers": int(sizes[c]), "means": {k: float(v) for k, v in means.loc[c].items()}}
        for c in sizes.index
    }
