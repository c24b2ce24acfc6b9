"""Per-parameter optax optimisers with start steps (`scaling.config.OptimiserConfig`)."""

import jax
import optax

from scaling.config import OptimiserConfig
from scaling.fitting.params import parameter_labels

FROZEN = "__frozen__"


def build_optimiser(
    params: dict, configs: dict[str, OptimiserConfig]
) -> optax.GradientTransformation:
    """One optimiser per parameter name (optax.partition); names without one are frozen."""
    labels = parameter_labels(params)
    transforms = {name: config.transform() for name, config in configs.items()}
    labels = jax.tree.map(lambda name: name if name in transforms else FROZEN, labels)
    transforms[FROZEN] = optax.set_to_zero()
    return optax.partition(transforms, labels)
