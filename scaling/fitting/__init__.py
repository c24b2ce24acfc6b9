"""The fitting engine: parameter tree, loss, preconditioning, optimisers, the step, the
plain-loop reference, the quasi-Newton stage, and what starts and runs a fit."""
