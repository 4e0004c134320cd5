"""The texts the pipeline reads: the M2D2 release (``m2d2``, its domain names in ``catalogue``), the
source corpora (``sources``), the seeded samples drawn from both (``sampling``) and the demo's
generated corpus (``demo``)."""
