"""Analyses of captured statistics: head roles (`classify_heads`), copying evidence, TransformerLens parity."""

from headscope.analysis.detectors import copying_scores
from headscope.analysis.roles import (
    DEFAULT_THRESHOLDS, ROLE_STATISTICS, HeadRoles, RoleTable, bootstrap_interval, classify_heads,
    shuffled_control, uniform_null,
)
from headscope.analysis.tl_compat import tl_detect_scores

__all__ = [
    "DEFAULT_THRESHOLDS", "ROLE_STATISTICS", "HeadRoles", "RoleTable", "bootstrap_interval", "classify_heads",
    "copying_scores", "shuffled_control", "tl_detect_scores", "uniform_null",
]
