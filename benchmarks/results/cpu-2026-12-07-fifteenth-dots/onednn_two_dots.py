"""XLA:CPU's oneDNN dot fusions on two dots that feed one add ("partition compile failed").

    ONEDNN_TYPE=LIBRARY_FUSION_TYPE_DOT python onednn_two_dots.py add_two_2d_dots
"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=" + os.environ.get("ONEDNN_TYPE", "LIBRARY_FUSION_TYPE_DOT") + " --xla_cpu_experimental_ynn_fusion_type="
import jax, jax.numpy as jnp
k = jax.random.PRNGKey(0)
p1 = jax.random.normal(k, (4, 4, 64, 64)); p2 = p1 * 0.5
v = jax.random.normal(k, (4, 4, 128, 64))
tests = {
  "add_two_dots_slices": lambda p1, p2, v: jnp.einsum("bhqk,bhkd->bhqd", p1, v[:, :, 64:]) + jnp.einsum("bhqk,bhkd->bhqd", p2, v[:, :, :64]),
  "add_two_dots_same_v": lambda p1, p2, v: jnp.einsum("bhqk,bhkd->bhqd", p1, v[:, :, 64:]) + jnp.einsum("bhqk,bhkd->bhqd", p2, v[:, :, 64:]),
  "add_two_dots_params": lambda p1, p2, v: jnp.einsum("bhqk,bhkd->bhqd", p1, p2) + jnp.einsum("bhqk,bhkd->bhqd", p2, p1),
  "add_two_2d_dots": lambda p1, p2, v: p1[0, 0] @ p2[0, 0] + p2[0, 0] @ p1[0, 0],
  "add_two_2d_dots_x": lambda p1, p2, v: p1[0, 0] @ p2[0, 0] + p1[0, 1] @ p2[0, 1],
}
print(sys.argv[1], jax.jit(tests[sys.argv[1]])(p1, p2, v).sum())
