"""Numerical schemes (placeholder registrations; the network helper fills these in)."""

from lmsearch.nn.registry import register_scheme


@register_scheme
class EulerScheme:
    name = "euler"
    functions_per_step = 1


@register_scheme
class LMScheme:
    name = "lm"
    functions_per_step = 1


@register_scheme
class RK2Scheme:
    name = "rk2"
    functions_per_step = 2


@register_scheme
class RK4Scheme:
    name = "rk4"
    functions_per_step = 4


@register_scheme
class PolyScheme:
    name = "poly"
    functions_per_step = 1


@register_scheme
class RevScheme:
    name = "rev"
    functions_per_step = 2
