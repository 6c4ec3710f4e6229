"""Natural-language instructions: bare presets that the neural engine wraps into the official
CosyVoice3 form, and what parsing finds."""
from __future__ import annotations

import pytest

from cosyvoice.engines.cosyvoice3.engine import instruct_prompt_text
from cosyvoice.text.instruct import PRESETS, parse_instruction


def test_presets_are_bare_and_wrapped_into_the_form_cosyvoice3_was_trained_on():
    assert len(PRESETS) >= 12
    for label, text in PRESETS:
        assert "/" in label, label                          # Chinese / English label
        # bare: what the UI shows in the instruction box, no system prompt or control token
        assert "helpful assistant" not in text and "<|" not in text, text
        assert instruct_prompt_text(text) == f"You are a helpful assistant. {text}<|endofprompt|>"
    texts = [t for _, t in PRESETS]
    assert "请用广东话表达。" in texts and "请用四川话表达。" in texts


@pytest.mark.parametrize("label_part,attribute", [
    ("Cantonese", "dialect"), ("Sichuanese", "dialect"), ("Louder", "louder"), ("Softer", "softer"),
    ("Slower", "slower"), ("Faster", "faster"), ("Happy", "happy"), ("Sad", "sad"), ("Angry", "angry"),
    ("Whisper", "whisper"),
])
def test_every_style_preset_is_understood(label_part, attribute):
    text = next(t for label, t in PRESETS if label_part in label)
    ins = parse_instruction(text)
    assert attribute in ins.recognised
    assert ins.unrecognised == ()


@pytest.mark.parametrize("text,speed,volume,pitch", [
    ("请用尽可能快地语速说一句话。", ">", "=", "="),
    ("Please speak a bit slower.", "<", "=", "="),
    ("Please say a sentence as loudly as possible.", "=", ">", "="),
    ("小声一点说", "=", "<", "="),
    ("请用更高的音调说", "=", "=", ">"),
    ("Speak in a deeper voice, slowly", "<", "=", "<"),
    ("Speak faster and louder", ">", ">", "="),
])
def test_directions_of_change(text, speed, volume, pitch):
    ins = parse_instruction(text)
    for value, want in ((ins.speed, speed), (ins.volume, volume), (ins.pitch, pitch)):
        assert {">": value > 1.0, "<": value < 1.0, "=": value == 1.0}[want], (text, ins)


def test_strength_words_scale_the_change():
    strong = parse_instruction("请用尽可能快地语速说一句话。").speed
    plain = parse_instruction("请快点说").speed
    mild = parse_instruction("请稍微快一点说").speed
    assert strong > plain > mild > 1.0


def test_emotion_whisper_and_dialect():
    assert parse_instruction("请非常开心地说一句话。").emotion == "happy"
    assert parse_instruction("Say it angrily").emotion == "angry"
    assert parse_instruction("sadly, please").emotion == "sad"
    assert parse_instruction("whisper it").whisper
    ins = parse_instruction("用粤语慢一点说")
    assert ins.dialect == "Cantonese" and ins.speed < 1.0
    ins = parse_instruction("请用长沙话说")
    assert ins.dialect == "长沙话"
    assert parse_instruction("快乐地说").speed == 1.0        # 快乐 is happy, not fast


@pytest.mark.parametrize("text,part", [
    ("我想体验一下小猪佩奇风格，可以吗？", "小猪佩奇"),
    ("Say it in Peppa Pig style", "Peppa Pig"),
    ("请带着笑声说", "笑声"),
    ("开心地说，并且模仿机器人", "机器人"),
])
def test_what_is_not_understood_is_kept(text, part):
    ins = parse_instruction(text)
    assert any(part in u for u in ins.unrecognised)


def test_an_instruction_pasted_in_the_model_form_parses_like_the_bare_one():
    wrapped = parse_instruction("You are a helpful assistant. 请用四川话表达。<|endofprompt|>")
    assert wrapped == parse_instruction("请用四川话表达。")
    assert wrapped.text == "请用四川话表达。" and wrapped.dialect == "Sichuanese"
