"""Per-parameter optax optimisers with start steps, built from a config."""

from dataclasses import dataclass

import jax
import optax

from scaling.partition import parameter_labels

FROZEN = "__frozen__"


@dataclass(frozen=True)
class OptimiserSpec:
    """How one parameter is fitted.

    Attributes:
        kind: an optax optimiser name taking a learning rate ("sgd", "adam", …).
        lr: learning rate (with preconditioning, in units of a Gauss-Newton step).
        start: first step at which the parameter moves; before it updates are zero and
            the optimiser's state is left untouched.
        precondition: scale the gradient by the inverse Fisher diagonal.
    """

    kind: str = "adam"
    lr: float = 1e-2
    start: int = 0
    precondition: bool = False

    def transform(self) -> optax.GradientTransformation:
        factory = getattr(optax, self.kind, None)
        if factory is None or not callable(factory):
            raise ValueError(f"unknown optax optimiser {self.kind!r}")
        inner = factory(self.lr)
        if self.start <= 0:
            return inner
        return optax.conditionally_mask(inner, lambda count: count >= self.start)


def build_optimiser(params: dict, specs: dict[str, OptimiserSpec]) -> optax.GradientTransformation:
    """One optimiser per parameter name (optax.partition); names without a spec are frozen."""
    labels = parameter_labels(params)
    transforms = {name: spec.transform() for name, spec in specs.items()}
    labels = jax.tree.map(lambda name: name if name in transforms else FROZEN, labels)
    transforms[FROZEN] = optax.set_to_zero()
    return optax.partition(transforms, labels)
