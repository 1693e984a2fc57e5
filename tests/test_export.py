"""`jaxagent export` writes a directory transformers serves as it is: its tokenizer encodes our prompts to our ids,
its chat template writes our chat prompt, and generate (with its generation config) writes our greedy text."""
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_text_tokenizer import gemma_like

import envs_jax
from jaxagent.env_kinds import make_renderer
from jaxagent.model import load_policy
from jaxagent.model.sampler import generate
from jaxagent.text import PromptOptions, chat_prompt, load_tokenizer, shipped_tokenizer
from jaxagent.text.tokenizer import save_hf_tokenizer
from jaxagent.trainers import export_from_config

BASE = Path(__file__).resolve().parent.parent / "jaxagent" / "assets" / "nano-greedy-base"
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")


def _prompts(tokenizer, n=4):
    """Host-rendered bandit and tic-tac-toe prompts mid-episode."""
    out = []
    for name, options in (("bandit-gaussian", {"num_arms": 5, "horizon": 6}), ("tictactoe", {})):
        env = envs_jax.make_env(name, **options)
        renderer = make_renderer(env, tokenizer, PromptOptions())
        params = env.sample_params(jax.random.key(0))
        _, state = env.reset(jax.random.key(1), params)
        for t in range(n // 2):
            out.append(renderer.render_text(state, params))
            legal = getattr(state, "legal_mask", np.ones(env.num_actions, bool))
            _, state, *_ = env.step(jax.random.key(t), state, int(np.argmax(np.asarray(legal))), params)
    return out


def _same_encoding(ours, directory):
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(directory)
    for text in _prompts(ours) + ["ACTION=blue <end_of_turn>\n", "  spaces,\n\n tabs\t and 3.14159 ünïcödé"]:
        assert theirs.encode(text, add_special_tokens=False) == ours.encode(text), text
    message = [{"role": "user", "content": "You are in a room with 5 buttons. "}]
    assert theirs.apply_chat_template(message, tokenize=False, add_generation_prompt=True) == \
        chat_prompt(message[0]["content"])
    return theirs


@needs_torch
def test_exported_policy_serves_in_transformers_with_our_tokens_and_greedy_text(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "hf"
    export_from_config(None, ["model.tokenizer=shipped", f"checkpoint={BASE}", f"out={out}"])
    ours = shipped_tokenizer()
    theirs = _same_encoding(ours, out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    policy = load_policy(out)
    prompt = ours.encode(_prompts(ours)[1])
    _, tokens, _, n = generate(policy.params, policy.cfg, jnp.asarray([prompt]), jnp.asarray([len(prompt)]),
                               jax.random.key(0), max_len=len(prompt) + 32, max_new_tokens=32,
                               stop_tokens=ours.stop_ids)
    mine = np.asarray(tokens[0, :int(n[0])]).tolist()
    with torch.inference_mode():  # the generation config's stop tokens and pad id, nothing passed by hand
        hf = model.generate(torch.as_tensor([prompt]), attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
                            do_sample=False, max_new_tokens=32)
    assert hf[0, len(prompt):].tolist() == mine and mine[-1] in ours.stop_ids
    assert "ACTION=" in theirs.decode(mine)


def test_a_gemma_sentencepiece_tokenizer_exports_to_the_same_ids(tmp_path):
    ours = gemma_like()  # a SentencePiece model trained as Gemma's, in a Gemma directory (tokenizer.model)
    save_hf_tokenizer(ours, tmp_path / "hf")
    _same_encoding(ours, tmp_path / "hf")
    assert load_tokenizer(tmp_path / "hf").encode(chat_prompt("Hi")) == ours.encode(chat_prompt("Hi"))
