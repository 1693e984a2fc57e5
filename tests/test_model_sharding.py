"""Partition rules, and the same forward / sampler results on 1 device and on 8 fake CPU devices."""
import textwrap

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from cpu_devices import ROOT, run_on_cpu_devices
from jaxagent.model import GemmaConfig, cache_partition_spec, init_cache, param_partition_specs
from jaxagent.model.gemma import param_shapes


def _abstract(cfg, value_head=False):
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.bfloat16), param_shapes(cfg, value_head),
                        is_leaf=lambda s: isinstance(s, tuple))


def test_every_parameter_has_a_rule_of_matching_rank():
    specs = param_partition_specs(_abstract(GemmaConfig.preset("gemma2-9b"), value_head=True))
    assert specs["embed"] == P("tensor", "fsdp")
    assert specs["layers"]["q"] == P(None, "fsdp", "tensor", None)
    assert specs["layers"]["o"] == P(None, "tensor", None, "fsdp")
    assert specs["layers"]["down"] == P(None, "tensor", "fsdp")
    assert specs["layers"]["attn_norm"] == P(None, None)
    assert specs["value_head"]["b"] == P()
    shapes = jax.tree.leaves(_abstract(GemmaConfig.preset("gemma2-9b"), value_head=True))
    assert all(len(s) == len(a.shape) for s, a in zip(jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)),
                                                        shapes))


def test_axes_that_do_not_divide_are_dropped():
    class FakeMesh:
        shape = {"data": 1, "fsdp": 5, "tensor": 3}
    specs = param_partition_specs(_abstract(GemmaConfig.preset("tiny")), FakeMesh())
    assert specs["layers"]["gate"] == P(None, None, None)     # 256 % 5, 1024 % 3
    assert specs["layers"]["q"] == P(None, None, None, None)
    cache = init_cache(GemmaConfig.preset("tiny"), 10, 8)
    spec = cache_partition_spec(cache, FakeMesh())
    assert spec.k == P(None, ("data", "fsdp"), None, None, None) and spec.end == P(("data", "fsdp"))


SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jaxagent.model import (append, batch_sharding, cache_shardings, forward, init_cache, load_hf, make_mesh,
                                param_shardings, sample, score)
    cfg, params = load_hf(FIXTURE)
    assert len(jax.devices()) == 8
    B, P, G = 8, 12, 10
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, size=(B, 20)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(20), (B, 20))
    prompt = jnp.asarray(rng.integers(3, cfg.vocab_size, size=(B, P)), jnp.int32)
    lengths = jnp.asarray(rng.integers(4, P + 1, size=B), jnp.int32)

    # Tokens are compared across programs only greedily; sampled (top-p) tokens through their log-probs.
    @jax.jit
    def run(params, tokens, prompt, lengths, cache):
        logits = forward(params, cfg, tokens, positions)[0]
        cache, last = append(params, cfg, cache, prompt, lengths)
        greedy, toks, logps, n = sample(params, cfg, cache, last, jax.random.key(0), max_new_tokens=G)
        _, drawn, drawn_logps, drawn_n = sample(params, cfg, cache, last, jax.random.key(0), max_new_tokens=G,
                                                temperature=0.8, top_p=0.9)
        return logits, toks, logps, n, greedy.end, drawn, drawn_logps, drawn_n

    score_jit = jax.jit(lambda params, seqs: score(params, cfg, seqs, temperature=0.8))

    def scored(drawn):
        seqs = np.zeros((B, P + G), np.int32)
        for b, p in enumerate(np.asarray(lengths)):
            seqs[b, :p + G] = np.concatenate([np.asarray(prompt)[b, :p], drawn[b]])
        logp = np.asarray(score_jit(params, jnp.asarray(seqs)))
        return np.stack([logp[b, p:p + G] for b, p in enumerate(np.asarray(lengths))])

    want = run(params, tokens, prompt, lengths, init_cache(cfg, B, P + G))
    np.testing.assert_array_equal(np.asarray(want[7]), G)
    np.testing.assert_allclose(np.asarray(want[6]), scored(np.asarray(want[5])), atol=1e-4)
    for shape in ((2, 2, 2), (8, 1, 1)):
        mesh = make_mesh(*shape)
        sp = load_hf(FIXTURE, shardings=param_shardings(mesh, params))[1]  # each shard reads only its slice
        for ours, theirs in zip(jax.tree.leaves(sp), jax.tree.leaves(params)):
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
        cache = init_cache(cfg, B, P + G)
        cache = jax.device_put(cache, cache_shardings(mesh, cache))
        put = lambda a: jax.device_put(a, batch_sharding(mesh, a.shape))
        if shape == (2, 2, 2):
            assert len(sp["layers"]["gate"].addressable_shards) == 8
            assert sp["layers"]["gate"].addressable_shards[0].data.shape == (4, 24, 32)
            assert cache.k.addressable_shards[0].data.shape[1:3] == (2, 1)
        got = run(sp, put(tokens), put(prompt), put(lengths), cache)
        np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), atol=1e-4, rtol=0)
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
        np.testing.assert_allclose(np.asarray(got[2]), np.asarray(want[2]), atol=1e-4)
        np.testing.assert_array_equal(np.asarray(got[3]), np.asarray(want[3]))
        np.testing.assert_array_equal(np.asarray(got[4]), np.asarray(want[4]))
        np.testing.assert_array_equal(np.asarray(got[7]), G)
        np.testing.assert_allclose(np.asarray(got[6]), scored(np.asarray(got[5])), atol=1e-4)
        print("mesh", shape, "ok")
""")


def test_same_results_on_one_and_eight_fake_devices(tmp_path):
    script = tmp_path / "sharded.py"
    script.write_text(f"FIXTURE = {str(ROOT / 'tests/fixtures/gemma2_tiny')!r}\n" + SCRIPT)
    out = run_on_cpu_devices(8, [str(script)])
    assert "mesh (2, 2, 2) ok" in out and "mesh (8, 1, 1) ok" in out
