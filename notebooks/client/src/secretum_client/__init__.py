"""Python client for the secretum research data warehouse.

Researchers get differentially-private aggregates only: every answer is noisy, comes with
95% confidence intervals, and is charged to a project's privacy budget.
"""

from .bundle import BundleNotVerified, verify_bundle
from .client import Client
from .cohort import plot_survival, survival_curve
from .errors import (
    BudgetExhausted,
    Conflict,
    Forbidden,
    Malformed,
    NotFound,
    PayloadTooLarge,
    ProjectNotActive,
    RateLimited,
    SecretumError,
    ServerError,
    SqlRefused,
    Unauthorized,
)

__all__ = [
    "Client",
    "verify_bundle",
    "BundleNotVerified",
    "plot_survival",
    "survival_curve",
    "SecretumError",
    "Malformed",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "ProjectNotActive",
    "BudgetExhausted",
    "PayloadTooLarge",
    "SqlRefused",
    "RateLimited",
    "ServerError",
]
__version__ = "0.1.0"
