"""Model adapters, registered by name: one file each, exposing `v(x, t, cond)` (`VelocityModel`).
Importing this package registers them all."""
from . import digits_flow, sd3, sd15  # noqa: F401  (registration)
