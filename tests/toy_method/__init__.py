"""A fifth method in a test folder: prototypes trained by gradient on the k-means loss
(mean squared distance to the nearest prototype), assigned to the nearest prototype. It
is the whole of what a method needs: this SPEC, an objective and hooks; registered with
``clam_dist.methods.register("toy", "toy_method")`` by tests/test_toy_method.py."""

from __future__ import annotations

from clam_dist.methods.spec import MethodDefaults, MethodSpec, Ref

DEFAULTS = MethodDefaults(lr=0.05, n_clusters=3)

SPEC = MethodSpec(
    name="toy",
    summary="prototypes trained by gradient on the k-means loss",
    hooks=Ref("toy_method.hooks:Hooks"),
    estimator=Ref("toy_method.hooks:ToyClustering"),
    defaults=DEFAULTS,
    assignment_rule="nearest",
)
