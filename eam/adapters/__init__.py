"""Model adapters, registered by name: one file each, exposing `v(x, t, cond)` (`VelocityModel`), found by
`eam.registry.discover` (a new module here registers itself with `@register("model", NAME, domain=...)`)."""
