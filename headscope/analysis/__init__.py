"""Analyses of captured statistics: head roles (`classify_heads`, the role registry), copying evidence,
TransformerLens parity."""

from headscope.analysis.detectors import copying_scores
from headscope.analysis.lengths import LengthSweep, classify_across_lengths
from headscope.analysis.role_registry import Role, get_role, register_role, registered_roles, unregister_role
from headscope.analysis.role_table import HeadRoles, RoleTable
from headscope.analysis.roles import bootstrap_interval, classify_heads, shuffled_control, uniform_null
from headscope.analysis.tl_compat import tl_detect_scores

__all__ = [
    "HeadRoles", "LengthSweep", "Role", "RoleTable", "bootstrap_interval", "classify_across_lengths", "classify_heads",
    "copying_scores", "get_role",
    "register_role", "registered_roles", "shuffled_control", "tl_detect_scores", "uniform_null", "unregister_role",
]
