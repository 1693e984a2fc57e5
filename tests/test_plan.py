"""``jaxagent plan``: its exact parts against the arrays a run really holds (one device, and the shards JAX places
on each of four devices); its activation estimate ordered as the remat policies are."""
import json
import sys

import jax

from cpu_devices import run_on_cpu_devices

QUICKSTART = "configs/quickstart.yaml"
MESH = "model.mesh=[1,4,1]"


def test_parameters_optimizer_state_and_cache_are_those_a_run_holds(capsys):
    from jaxagent import plan
    from jaxagent.experiment_config import load_experiment
    from jaxagent.optim import make_optimizer
    from jaxagent.trainers.setup import build
    result = plan.plan_from_config(QUICKSTART, ["model.mesh=[1,1,1]"], devices=1)
    exp = build(load_experiment(QUICKSTART, ["model.mesh=[1,1,1]"]))
    nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))  # noqa: E731
    parts = result["parts"]
    assert parts["parameters"] == nbytes(exp.init_params) == parts["gradients (float32)"]
    assert parts["optimizer state"] == nbytes(make_optimizer(exp.cfg.optim, 10).init(exp.init_params))
    from jaxagent.model import init_cache
    cache = init_cache(exp.model_cfg, exp.cfg.rollout.envs_per_rollout, exp.train_loop.cache_len)  # what a rollout makes
    assert parts["rollout KV cache"] == cache.k.nbytes + cache.v.nbytes
    assert parts["compute copy of the parameters"] == 0
    assert "GiB per device" in capsys.readouterr().out
    full = plan.plan_from_config(QUICKSTART, ["model.mesh=[1,1,1]", "model.remat=full"], devices=1)
    assert 0 < full["parts"]["training activations (estimate)"] < parts["training activations (estimate)"]
    bf16 = plan.plan_from_config(QUICKSTART, ["model.mesh=[1,1,1]", "model.dtype=bfloat16"], devices=1)
    assert bf16["parts"]["compute copy of the parameters"] == parts["parameters"] // 2


def _sharded_bytes():
    """Bytes of the parameter shards JAX places on device 0 of the quickstart's model on a 1 x 4 x 1 mesh."""
    from jaxagent import plan
    from jaxagent.experiment_config import load_experiment
    from jaxagent.trainers.setup import build
    exp = build(load_experiment(QUICKSTART, [MESH]))
    placed = sum(next(s for s in x.addressable_shards if s.device == jax.devices()[0]).data.nbytes
                 for x in jax.tree.leaves(exp.init_params))
    return {"placed": placed, "whole": sum(x.nbytes for x in jax.tree.leaves(exp.init_params)),
            "planned": plan.plan_from_config(QUICKSTART, [MESH], devices=4)["parts"]["parameters"]}


def test_parameter_shards_are_those_jax_places_on_four_devices():
    got = json.loads(run_on_cpu_devices(4, [__file__, "--sharded"]).splitlines()[-1])
    assert got["planned"] == got["placed"] < got["whole"] / 3


if __name__ == "__main__" and "--sharded" in sys.argv:
    print(json.dumps(_sharded_bytes()))
