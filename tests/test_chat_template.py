"""Per-model chat templates: the role markers come from the model's own Jinja template.

Each template below is written in the style of a model family's (ChatML, Llama 3 with
header tokens and ``bos_token``, Gemma with no system role and a ``model`` turn, Gemma 3
folding the system prompt into the first user turn, Mistral with strict alternation and
``eos_token`` after answers). The markers SGL derives are checked against transformers'
own ``apply_chat_template`` on a tokenizer folder carrying the template: a conversation
written role by role with SGL's markers must be exactly transformers' rendering.
"""

from __future__ import annotations

import json

import pytest

from sgl.backends.chat_template import ChatTemplate, ChatTemplateError, role_affixes, special_tokens

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}"
          "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
         "{% for message in messages %}"
         "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
         "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
         "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
         "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
         "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
GEMMA3 = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
          "{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}"
          "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
          "{% for message in loop_messages %}"
          "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
          "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + message['content'] | trim"
          " + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
MISTRAL = ("{{ bos_token }}{% for message in messages %}"
           "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
           "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
           "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")

BOS, EOS = "<bos>", "<eos>"
# name -> (template, a conversation it accepts, roles it cannot render)
TEMPLATES = {
    "chatml": (CHATML, ["system", "user", "assistant", "user"], []),
    "llama3": (LLAMA3, ["system", "user", "assistant", "user"], []),
    "gemma": (GEMMA, ["user", "assistant", "user"], ["system"]),
    "gemma3": (GEMMA3, ["user", "assistant", "user"], ["system"]),
    "mistral": (MISTRAL, ["user", "assistant", "user"], ["system"]),
}


def tokenizer_folder(tmp_path, template: str):
    """A tiny byte-level tokenizer folder whose tokenizer_config.json carries ``template``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS, BOS])
    tok.save(str(tmp_path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": {"__type": "AddedToken", "content": BOS, "special": True},
              "eos_token": EOS, "chat_template": template}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_role_markers_rebuild_transformers_rendering(tmp_path, name):
    transformers = pytest.importorskip("transformers", reason="transformers renders the reference")
    template, roles, _ = TEMPLATES[name]
    folder = tokenizer_folder(tmp_path, template)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    messages = [{"role": r, "content": f"message {i} from {r}"} for i, r in enumerate(roles)]
    ours = ChatTemplate(template, **special_tokens(folder), name=name)
    written = "".join(ours.role_affixes(m["role"])[0] + m["content"] + ours.role_affixes(m["role"])[1]
                      for m in messages)
    expected = tok.apply_chat_template(messages, tokenize=False)
    assert expected.removeprefix(BOS) == written
    # the generation prompt is the assistant's prefix
    with_prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert with_prompt.removeprefix(BOS) == written + ours.role_affixes("assistant")[0]


@pytest.mark.parametrize("name", [n for n, (_, _, refused) in TEMPLATES.items() if refused])
def test_role_a_template_cannot_render_is_a_clear_error(name):
    template, _, refused = TEMPLATES[name]
    for role in refused:
        with pytest.raises(ChatTemplateError, match=f"cannot give the text around a {role!r} message"):
            ChatTemplate(template, bos_token=BOS, eos_token=EOS, name=name).role_affixes(role)


def test_template_own_reason_is_quoted():
    with pytest.raises(ChatTemplateError, match="System role not supported"):
        ChatTemplate(GEMMA, name="gemma").role_affixes("system")


def test_eos_token_of_the_tokenizer_ends_an_answer():
    assert ChatTemplate(MISTRAL, bos_token=BOS, eos_token="</s>").role_affixes("assistant") == ("", "</s>")


def test_no_template_is_chatml_and_bad_templates_are_refused():
    assert role_affixes(None, "user") == ("<|im_start|>user\n", "<|im_end|>\n")
    with pytest.raises(ChatTemplateError, match="not valid Jinja"):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="cannot give the text around a 'user' message"):
        ChatTemplate("{{ messages | length }}").role_affixes("user")


def test_local_model_uses_the_checkpoints_own_template(tmp_path):
    pytest.importorskip("torch", reason="the local engine needs torch")
    pytest.importorskip("transformers", reason="transformers writes the tiny checkpoint")
    from test_architectures import make_checkpoint

    from sgl.backends.local import LocalModel

    make_checkpoint("gemma2", tmp_path)
    tokenizer_folder(tmp_path, GEMMA)
    model = LocalModel(str(tmp_path), weights="float", max_batch=1)
    try:
        assert model.role_text("user", "hi") == ("<start_of_turn>user\n", "<end_of_turn>\n")
        assert model.role_text("assistant", "") == ("<start_of_turn>model\n", "<end_of_turn>\n")
        with pytest.raises(ChatTemplateError, match="System role not supported"):
            model.role_text("system", "be brief")
        model.set_chat_template(CHATML)
        assert model.role_text("system", "x") == ("<|im_start|>system\n", "<|im_end|>\n")
        with pytest.raises(ValueError, match="cannot give the text around a 'user' message"):
            model.set_chat_template("{{ 'no messages here' }}")
    finally:
        model.close()
