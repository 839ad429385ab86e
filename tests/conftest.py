import os

from hypothesis import HealthCheck, settings

# CI gets a bounded but meaningful number of examples; run with
# HYPOTHESIS_PROFILE=thorough for a deeper search by hand.
settings.register_profile(
    "default", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
