"""Multi-turn sampler: append/rewind equals re-prefilling, log-probs equal the scoring path, stops, sampling.
Reference computations are jitted too: run op by op, each of their operations would compile on its own."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fixtures.make_gemma2_fixture import FIXTURE_DIR
from jaxagent.model import cpu_kernels, forward, gemma, generate, init_cache, load_hf, prefill, rewind, sample, score
from jaxagent.model.kv_cache import as_block
from jaxagent.model.sampler import append_jit, sample_jit, score_jit, unrolled

G = 4


@pytest.fixture(scope="module")
def model():
    return load_hf(FIXTURE_DIR)


@functools.partial(jax.jit, static_argnums=1)
def _logits(params, cfg, tokens):
    return forward(params, cfg, tokens, jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape))[0]


_transformer = jax.jit(gemma.transformer, static_argnums=1)


def _reference_greedy(params, cfg, contexts, steps, pad_to):
    """Greedy continuation by full causal forwards without a cache (one right-padded batch per step)."""
    seqs = [list(c) for c in contexts]
    new_tokens, new_logps = [[] for _ in seqs], [[] for _ in seqs]
    for _ in range(steps):
        batch = np.zeros((len(seqs), pad_to), np.int32)
        for b, s in enumerate(seqs):
            batch[b, :len(s)] = s
        logits = np.asarray(_logits(params, cfg, jnp.asarray(batch)), np.float64)
        for b, s in enumerate(seqs):
            row = logits[b, len(s) - 1]
            tok = int(row.argmax())
            logp = row - row.max() - np.log(np.exp(row - row.max()).sum())
            new_tokens[b].append(tok)
            new_logps[b].append(logp[tok])
            s.append(tok)
    return np.array(new_tokens), np.array(new_logps)


def _ragged(rng, lengths, vocab, width=None):
    toks = np.zeros((len(lengths), width or max(lengths.max(), 1)), np.int32)
    for b, n in enumerate(lengths):
        toks[b, :n] = rng.integers(3, vocab, size=n)
    return toks


@pytest.fixture
def values_read_once(monkeypatch):
    """Decode attention with every query head of a group in one product over the values (as for values too large
    for the cache), instead of one product per head."""
    monkeypatch.setattr(cpu_kernels, "PER_HEAD_VALUES_BYTES", 0)
    jax.clear_caches()  # jitted functions traced with the default must be traced again
    yield
    jax.clear_caches()


@pytest.mark.parametrize("unroll_layers,values_once", [(False, False), (True, False), (True, True)])
def test_twenty_turn_episode_with_rewinds_equals_reprefill(model, unroll_layers, values_once, request):
    """Also past the sliding window, where unrolled layers read only the window's slots in local layers."""
    if values_once:
        request.getfixturevalue("values_read_once")
    cfg, params = model
    rng = np.random.default_rng(0)
    B, turns, max_len = 3, 20, 160
    prefix = _ragged(rng, np.array([5, 2, 7]), cfg.vocab_size)
    cache = init_cache(cfg, B, max_len)
    cache, _ = append_jit(params, cfg, cache, jnp.asarray(prefix), jnp.asarray([5, 2, 7]))
    history = [list(prefix[b, :n]) for b, n in enumerate([5, 2, 7])]
    end_of_history = np.asarray(cache.end)  # the jitted calls donate the cache
    got_tokens, got_logps, contexts = [], [], []
    for t in range(turns):
        hist_len = rng.integers(0 if t == 0 else 1, 5, size=B)
        tail_len = rng.integers(1, 6, size=B)
        line, tail = _ragged(rng, hist_len, cfg.vocab_size, 5), _ragged(rng, tail_len, cfg.vocab_size, 5)
        cache = rewind(cache, jnp.asarray(end_of_history))
        cache, _ = append_jit(params, cfg, cache, jnp.asarray(line), jnp.asarray(hist_len),
                              unroll_layers=unroll_layers)
        end_of_history = np.asarray(cache.end)
        cache, logits = append_jit(params, cfg, cache, jnp.asarray(tail), jnp.asarray(tail_len),
                                   unroll_layers=unroll_layers)
        cache, toks, logps, lengths = sample_jit(params, cfg, cache, logits, jax.random.key(t), max_new_tokens=G,
                                                    unroll_layers=unroll_layers)
        np.testing.assert_array_equal(np.asarray(lengths), G)
        np.testing.assert_array_equal(np.asarray(cache.end), np.asarray(end_of_history) + tail_len + G)
        for b in range(B):
            history[b] += list(line[b, :hist_len[b]])
        contexts.append([history[b] + list(tail[b, :tail_len[b]]) for b in range(B)])
        got_tokens.append(np.asarray(toks))
        got_logps.append(np.asarray(logps))
    assert max(len(c) for c in contexts[-1]) > 4 * cfg.sliding_window
    pad_to = max(len(c) for turn in contexts for c in turn) + G
    for t in range(turns):
        want_tokens, want_logps = _reference_greedy(params, cfg, contexts[t], G, pad_to)
        np.testing.assert_array_equal(got_tokens[t], want_tokens, err_msg=f"turn {t}")
        np.testing.assert_allclose(got_logps[t], want_logps, atol=2e-4, err_msg=f"turn {t}")


@pytest.mark.parametrize("unroll_layers", [False, True])
def test_prefix_shared_by_all_rows_read_from_one_row(model, unroll_layers):
    """Rows that start alike: reading the prefix's slots from row 0 for all rows gives the same tokens as
    reading each row's own copy and as full forwards; decoding past the window gathers local layers' slots."""
    cfg, params = model
    rng = np.random.default_rng(4)
    P, B, new = 12, 3, 8
    tail_len = np.array([3, 9, 5])
    prompts = np.concatenate([np.tile(rng.integers(3, cfg.vocab_size, size=P), (B, 1)),
                              _ragged(rng, tail_len, cfg.vocab_size)], axis=1)
    runs = []
    for shared in (0, P):
        cache = init_cache(cfg, B, 48)
        cache, _ = append_jit(params, cfg, cache, jnp.asarray(prompts[:, :P]), jnp.full((B,), P))
        cache, logits = append_jit(params, cfg, cache, jnp.asarray(prompts[:, P:]), jnp.asarray(tail_len),
                                   history_len=P, unroll_layers=unroll_layers, shared_prefix=shared)
        _, toks, logps, _ = sample_jit(params, cfg, cache, logits, jax.random.key(0), max_new_tokens=new,
                                       history_len=P + tail_len.max(), unroll_layers=unroll_layers,
                                       shared_prefix=shared)
        runs.append((np.asarray(toks), np.asarray(logps)))
    assert 2 * (cfg.sliding_window - 1) <= P + tail_len.max()
    np.testing.assert_array_equal(runs[1][0], runs[0][0])
    np.testing.assert_allclose(runs[1][1], runs[0][1], atol=1e-5)
    contexts = [list(prompts[b, :P + n]) for b, n in enumerate(tail_len)]
    want_tokens, _ = _reference_greedy(params, cfg, contexts, new, P + tail_len.max() + new)
    np.testing.assert_array_equal(runs[1][0], want_tokens)


def _prompt_and_sample(params, cfg, prompt_lengths, temperature=0.0, prompts=None, **kw):
    if prompts is None:
        prompts = _ragged(np.random.default_rng(1), np.asarray(prompt_lengths), cfg.vocab_size)
    B, P = prompts.shape
    cache = init_cache(cfg, B, P + kw.get("max_new_tokens", 12), params["embed"].dtype)
    cache, logits = append_jit(params, cfg, cache, jnp.asarray(prompts), jnp.asarray(prompt_lengths))
    kw.setdefault("max_new_tokens", 12)
    return prompts, sample_jit(params, cfg, cache, logits, jax.random.key(3), temperature=temperature, **kw)


def _score_continuations(params, cfg, prompts, lengths, toks, temperature):
    """Scoring-path log-probs of each row's sampled tokens, one right-padded batch."""
    G = toks.shape[1]
    seqs = np.zeros((len(lengths), prompts.shape[1] + G), np.int32)
    for b, p in enumerate(lengths):
        seqs[b, :p + G] = np.concatenate([prompts[b, :p], toks[b]])
    scored = np.asarray(score_jit(params, cfg, jnp.asarray(seqs), temperature=temperature))
    return np.stack([scored[b, p:p + G] for b, p in enumerate(lengths)])


@pytest.mark.parametrize("unroll_layers", [False, True])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_sampler_logprobs_equal_scoring_path(model, temperature, unroll_layers):
    cfg, params = model
    lengths = [6, 3, 9]
    prompts, (_, toks, logps, _) = _prompt_and_sample(params, cfg, lengths, temperature,
                                                      unroll_layers=unroll_layers)
    scored = _score_continuations(params, cfg, prompts, lengths, np.asarray(toks), temperature)
    np.testing.assert_allclose(np.asarray(logps), scored, atol=1e-5, rtol=1e-5)  # GPUs reduce in other orders


def test_bf16_sampler_logprobs_close_to_fp32_scorer(model):
    """bf16 sampling vs fp32 scoring of the same tokens: mean |Δ log-prob| < 0.03, max < 0.5.

    The fixture's weights are large (logits near the soft-cap), which makes this a worst case for bf16.
    """
    cfg, params = model
    bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    lengths = [6, 3, 9]
    prompts, (_, toks, logps, _) = _prompt_and_sample(bf16, cfg, lengths, 1.0)
    diffs = np.abs(np.asarray(logps) - _score_continuations(params, cfg, prompts, lengths, np.asarray(toks), 1.0))
    assert diffs.mean() < 0.03 and diffs.max() < 0.5, (diffs.mean(), diffs.max())


# Prompts whose greedy continuations switch token mid-row (the fixture mostly repeats a token), by a clear
# margin, so the runs with and without stop tokens (two programs) agree at temperature 0.
SWITCHING_PROMPTS = ([20, 25, 114, 116, 115], [40, 18, 67, 55, 11, 38, 76, 10], [111, 23, 100, 5, 60, 11, 33])


def test_stop_tokens_end_rows_and_are_kept(model):
    cfg, params = model
    lengths = [len(p) for p in SWITCHING_PROMPTS]
    prompts = np.zeros((3, max(lengths)), np.int32)
    for b, p in enumerate(SWITCHING_PROMPTS):
        prompts[b, :len(p)] = p
    _, (_, free, _, _) = _prompt_and_sample(params, cfg, lengths, prompts=prompts)
    free = np.asarray(free)
    first_new = [next((i for i in range(1, 12) if free[b, i] not in free[b, :i]), None) for b in range(2)]
    assert None not in first_new, free
    stops = tuple(int(free[b, i]) for b, i in enumerate(first_new))
    _, (cache, toks, logps, n) = _prompt_and_sample(params, cfg, lengths, prompts=prompts, stop_tokens=stops)
    toks, logps, n = map(np.asarray, (toks, logps, n))
    for b in range(3):
        hits = [i for i, t in enumerate(free[b]) if t in stops]
        want = hits[0] + 1 if hits else 12
        assert n[b] == want
        np.testing.assert_array_equal(toks[b, :want], free[b, :want])
        assert (toks[b, want:] == cfg.pad_id).all() and (logps[b, want:] == 0).all()
    assert n[0] == first_new[0] + 1 and n[1] == first_new[1] + 1 and n[2] == 12, n
    np.testing.assert_array_equal(np.asarray(cache.end), np.asarray(lengths) + n)


def test_temperature_sampling_follows_softmax(model):
    cfg, params = model
    B, T = 4000, 0.8
    prompt = np.tile(np.array([[5, 9, 17]], np.int32), (B, 1))
    cache, logits = append_jit(params, cfg, init_cache(cfg, B, 4), jnp.asarray(prompt), jnp.full((B,), 3))
    _, toks, _, _ = sample_jit(params, cfg, cache, logits, jax.random.key(0), max_new_tokens=1, temperature=T)
    p = np.asarray(jax.nn.softmax(np.asarray(logits[0], np.float64) / T))
    freq = np.bincount(np.asarray(toks[:, 0]), minlength=cfg.vocab_size) / B
    assert np.abs(freq - p).max() < 4 * np.sqrt(p.max() / B) + 1e-3


@pytest.mark.parametrize("top_k,top_p", [(3, 1.0), (0, 0.6), (5, 0.5)])
def test_top_k_top_p_draw_only_from_the_allowed_set(model, top_k, top_p):
    cfg, params = model
    B, T = 1024, 4.0
    prompt = np.tile(np.array([[5, 9, 17]], np.int32), (B, 1))
    cache, logits = append_jit(params, cfg, init_cache(cfg, B, 4), jnp.asarray(prompt), jnp.full((B,), 3))
    _, toks, logps, _ = sample_jit(params, cfg, cache, logits, jax.random.key(1), max_new_tokens=1, temperature=T,
                                   top_k=top_k, top_p=top_p)
    row = np.asarray(logits[0], np.float64) / T
    logp = row - row.max() - np.log(np.exp(row - row.max()).sum())
    order = np.argsort(-row)
    allowed = order[:top_k] if top_k else order
    if top_p < 1.0:  # the nucleus of the top-k renormalised distribution, as in HF transformers
        probs = np.exp(logp[allowed]) / np.exp(logp[allowed]).sum()
        allowed = allowed[:int(np.searchsorted(np.cumsum(probs), top_p) + 1)]
    kept = np.exp(logp[allowed]) / np.exp(logp[allowed]).sum()
    drawn = set(np.asarray(toks[:, 0]).tolist())
    assert drawn <= set(allowed.tolist())
    assert set(allowed[kept > 0.02].tolist()) <= drawn
    np.testing.assert_allclose(np.asarray(logps[:, 0]), logp[np.asarray(toks[:, 0])], atol=1e-5)


def test_score_is_differentiable_and_value_head_reads_last_hidden(model):
    cfg, params = model
    params = dict(params, value_head={"w": jnp.ones((cfg.d_model,)), "b": jnp.array(0.5)})
    tokens = jnp.asarray(np.random.default_rng(2).integers(3, cfg.vocab_size, size=(2, 12)), jnp.int32)
    grads = jax.jit(jax.grad(lambda p: score(p, cfg, tokens).sum()))(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert np.abs(np.asarray(grads["layers"]["q"])).max() > 0
    logp, values = score_jit(params, cfg, tokens, with_values=True)
    assert logp.shape == (2, 12) and values.shape == (2, 12)
    from jaxagent.model import hidden_states
    h, _ = jax.jit(hidden_states, static_argnums=1)(params, cfg, tokens, jnp.broadcast_to(jnp.arange(12), (2, 12)))
    np.testing.assert_allclose(np.asarray(values), np.asarray(h).sum(-1) + 0.5, rtol=1e-5)


def test_rewind_never_moves_forward(model):
    cfg, _ = model
    cache = init_cache(cfg, 3, 16).replace(end=jnp.array([5, 9, 2]))
    np.testing.assert_array_equal(np.asarray(rewind(cache, jnp.array([3, 12, -1])).end), [3, 9, 0])


def test_self_mask_packs_independent_sequences_in_one_row(model):
    """Two sequences packed in one row with a block-diagonal causal mask give their separate hidden states."""
    cfg, params = model
    rng = np.random.default_rng(5)
    a, b = rng.integers(3, cfg.vocab_size, size=13), rng.integers(3, cfg.vocab_size, size=11)
    packed = jnp.asarray(np.concatenate([a, b])[None], jnp.int32)
    positions = jnp.asarray(np.concatenate([np.arange(13), np.arange(11)])[None], jnp.int32)
    seg = np.array([0] * 13 + [1] * 11)
    idx = np.arange(24)
    mask = jnp.asarray(((seg[:, None] == seg[None, :]) & (idx[None, :] <= idx[:, None]))[None])
    h, _, _ = _transformer(params, cfg, packed, positions, self_mask=mask)
    for seq, sl in ((a, slice(0, 13)), (b, slice(13, 24))):
        alone, _, _ = _transformer(params, cfg, jnp.asarray(seq[None], jnp.int32), jnp.arange(len(seq))[None])
        np.testing.assert_allclose(np.asarray(h[0, sl]), np.asarray(alone[0]), atol=1e-5)


def test_block_shared_by_several_rows_equals_each_rows_own_context(model):
    """Block row i serves query rows 3i..3i+2; each query row sees its own prefix of the block's keys."""
    cfg, params = model
    rng = np.random.default_rng(7)
    P, W, R = 20, 5, 3
    shared = rng.integers(3, cfg.vocab_size, size=(2, P)).astype(np.int32)
    chunks = rng.integers(3, cfg.vocab_size, size=(2 * R, W)).astype(np.int32)
    seen = np.array([P, P - 4, 9, P, 1, P - 7])  # shared keys visible to each query row
    _, k, v = _transformer(params, cfg, jnp.asarray(shared), jnp.broadcast_to(jnp.arange(P), (2, P)))
    block = as_block(cfg, k, v, jnp.broadcast_to(jnp.arange(P), (2, P)), jnp.asarray(np.arange(P)[None, :] < seen[:, None]))
    positions = jnp.broadcast_to(P + jnp.arange(W), (2 * R, W))
    h, _, _ = _transformer(params, cfg, jnp.asarray(chunks), positions, blocks=(block,))
    for row in range(2 * R):
        context = np.concatenate([shared[row // R, :seen[row]], chunks[row]])[None]
        context_positions = np.concatenate([np.arange(seen[row]), P + np.arange(W)])[None]
        alone, _, _ = _transformer(params, cfg, jnp.asarray(context), jnp.asarray(context_positions))
        np.testing.assert_allclose(np.asarray(h[row]), np.asarray(alone[0, -W:]), atol=1e-5)


@pytest.mark.parametrize("unroll_layers", [False, True])
def test_last_token_only_equals_that_tokens_hidden_state(model, unroll_layers):
    """``transformer(last=...)`` (each row's final layer run for one token) against every token's hidden states,
    with a block shared by several query rows and a packed self-mask; keys/values are those of every token."""
    cfg, params = model
    params = unrolled(params) if unroll_layers else params
    rng = np.random.default_rng(11)
    P, W, R = 9, 7, 2
    shared = rng.integers(3, cfg.vocab_size, size=(2, P)).astype(np.int32)
    _, k, v = _transformer(params, cfg, jnp.asarray(shared), jnp.broadcast_to(jnp.arange(P), (2, P)))
    block = as_block(cfg, k, v, jnp.broadcast_to(jnp.arange(P), (2, P)), jnp.asarray(np.arange(P) < [[P], [4], [P], [1]]))
    if unroll_layers:
        block = (gemma.unstack_layers(block[0]), gemma.unstack_layers(block[1]), *block[2:])
    chunks = jnp.asarray(rng.integers(3, cfg.vocab_size, size=(2 * R, W)), jnp.int32)
    positions = jnp.broadcast_to(P + jnp.arange(W), (2 * R, W))
    seg = np.array([0] * 3 + [1] * (W - 3))
    mask = jnp.asarray(np.broadcast_to((seg[:, None] == seg[None, :]) & np.tri(W, dtype=bool), (2 * R, W, W)))
    last = jnp.array([W - 1, 0, 2, 4])
    for self_mask in (None, mask):
        h, k_all, v_all = _transformer(params, cfg, chunks, positions, (block,), self_mask)
        h_last, k_last, v_last = _transformer(params, cfg, chunks, positions, (block,), self_mask, last=last)
        assert h_last.shape == (2 * R, 1, cfg.d_model)
        np.testing.assert_allclose(np.asarray(h_last[:, 0]), np.asarray(h)[np.arange(2 * R), np.asarray(last)],
                                   atol=1e-5)
        np.testing.assert_allclose(np.asarray(k_last), np.asarray(k_all), atol=1e-5)
        np.testing.assert_allclose(np.asarray(v_last), np.asarray(v_all), atol=1e-5)


def test_argmax_takes_the_first_maximum():
    from jaxagent.model.sampler import _argmax

    x = np.array([[0.0, 3.0, 3.0, -np.inf], [-np.inf, -np.inf, -1.0, -1.0], [2.0, 1.0, 2.0, 0.0]], np.float32)
    np.testing.assert_array_equal(np.asarray(_argmax(jnp.asarray(x))), np.argmax(x, axis=-1))


def test_inverse_cdf_draw_follows_softmax_and_never_draws_excluded_tokens():
    from jaxagent.model.sampler import _draw

    V, n = 50, 200_000  # 50 tokens: blocks of 8, the last one padded
    rng = np.random.default_rng(0)
    row = rng.normal(size=V).astype(np.float32) * 2
    row[[0, 7, 8, 31, 48, 49]] = -np.inf  # block edges and the padded block's end
    p = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
    logits = jnp.asarray(np.tile(row, (n, 1)))
    drawn = np.asarray(jax.jit(_draw)(logits, jax.random.uniform(jax.random.key(0), (n,))))
    freq = np.bincount(drawn, minlength=V) / n
    assert freq[p == 0].sum() == 0
    assert np.abs(freq - p).max() < 4 * np.sqrt(p.max() / n)
    # The ends of [0, 1) land on the first and last tokens of positive probability.
    ends = np.asarray(_draw(logits[:2], jnp.asarray([0.0, np.nextafter(np.float32(1), np.float32(0))])))
    np.testing.assert_array_equal(ends, [np.flatnonzero(p)[0], np.flatnonzero(p)[-1]])


@pytest.mark.parametrize("unroll_layers", [False, True])
def test_generate_decodes_from_its_prefill_as_from_the_cache(model, unroll_layers):
    """``generate`` hands its prefill's keys/values to ``sample``; reading them back from the cache is the same.
    The two are different programs, so tokens are compared at temperature 0 and floats to float32 rounding."""
    cfg, params = model
    lengths = np.array([9, 3, 6])
    prompts = jnp.asarray(_ragged(np.random.default_rng(3), lengths, cfg.vocab_size))
    kw = dict(max_new_tokens=G + 3, temperature=0.0, unroll_layers=unroll_layers)
    got = generate(params, cfg, prompts, jnp.asarray(lengths), jax.random.key(5), max_len=24, **kw)

    @jax.jit
    def from_the_cache(prompts, lengths):
        weights = unrolled(params) if unroll_layers else params  # generate prefills with them too
        cache, logits = prefill(weights, cfg, prompts, lengths, 24)
        return sample(weights, cfg, cache, logits, jax.random.key(5), history_len=prompts.shape[1], **kw)

    want = from_the_cache(prompts, jnp.asarray(lengths))
    (got_cache, got_tokens, got_logps, got_n), (want_cache, want_tokens, want_logps, want_n) = got, want
    np.testing.assert_array_equal(np.asarray(got_tokens), np.asarray(want_tokens))
    np.testing.assert_array_equal(np.asarray(got_n), np.asarray(want_n))
    np.testing.assert_array_equal(np.asarray(got_cache.end), np.asarray(want_cache.end))
    np.testing.assert_allclose(np.asarray(got_logps), np.asarray(want_logps), atol=1e-5)
    np.testing.assert_allclose(np.asarray(got_cache.k), np.asarray(want_cache.k), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got_cache.v), np.asarray(want_cache.v), atol=1e-5, rtol=1e-5)


def test_score_continuations_equals_scoring_each_prompt_with_its_continuation(model):
    """One prefill per prompt, continuations attending to its keys/values: the same log-probabilities as scoring
    every whole prompt + continuation sequence (sliding-window layers included: prompts longer than the window)."""
    from jaxagent.model.sampler import score_continuations_jit

    cfg, params = model
    rng = np.random.default_rng(7)
    prompt_lengths = np.array([cfg.sliding_window + 5, 3, 9])
    prompts = np.zeros((3, prompt_lengths.max()), np.int32)
    for n, length in enumerate(prompt_lengths):
        prompts[n, :length] = rng.integers(3, cfg.vocab_size, size=length)
    continuation_lengths = np.array([1, 4, 2, 3])
    continuations = rng.integers(3, cfg.vocab_size, size=(4, 4)).astype(np.int32)
    got = np.asarray(score_continuations_jit(params, cfg, jnp.asarray(prompts), jnp.asarray(prompt_lengths),
                                             jnp.asarray(continuations), jnp.asarray(continuation_lengths)))
    for n, length in enumerate(prompt_lengths):
        for c, m in enumerate(continuation_lengths):
            row = np.concatenate([prompts[n, :length], continuations[c, :m]])[None]
            want = np.asarray(score_jit(params, cfg, jnp.asarray(row)))[0, length:].sum()
            np.testing.assert_allclose(got[n, c], want, atol=2e-5, rtol=1e-5)


def test_full_rematerialisation_gives_the_same_gradients(model):
    import dataclasses
    cfg, params = model
    tokens = jnp.asarray(np.random.default_rng(3).integers(3, cfg.vocab_size, size=(2, 12)), jnp.int32)
    grads = {remat: jax.jit(jax.grad(lambda p, c=dataclasses.replace(cfg, remat=remat): score(p, c, tokens).sum()))(
        params) for remat in ("dots", "full")}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6),
                 grads["dots"], grads["full"])
