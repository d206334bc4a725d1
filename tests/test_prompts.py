"""Prompts byte for byte against strings worked out from the official scripts."""

from __future__ import annotations

import pytest

from evaluator.prompts import PromptOptions, Protocol, Rendering, answer_label, format_subject, render
from evaluator.data.records import Metric, Question, TaskType

SYSTEM = ("You are a helpful online shopping assistant. Please answer the following question about online "
          "shopping and follow the given instructions.\n\n")


def q(task: str, task_type: TaskType, text: str, truth, choices=None, metric=Metric.ACCURACY) -> Question:
    return Question(qid="x", source="mem", row=0, skill="s", task=task, task_type=task_type, metric=metric,
                    input=text, truth=truth, choices=choices)


MC = q("attribute_selection", TaskType.MULTIPLE_CHOICE, "Which one?", 2, ["red", "green", "blue", "black"])
REVIEW = q("review_rating_prediction", TaskType.MULTIPLE_CHOICE, "Rate: great!", 5, [])
RETRIEVAL = q("pt_keyphrase_retrieval", TaskType.RETRIEVAL, "Pick 3.\nOutput:", [1, 2, 3],
              metric=Metric.HIT_RATE_3)


def test_skill_wise_is_system_plus_input_with_official_token_budgets():
    skill_mc = q("t", TaskType.MULTIPLE_CHOICE, "Q?\n0. a\n1. b\n2. c\n3. d\nAnswer: ", 1)
    p = render(skill_mc)
    assert p.prompt == SYSTEM + "Q?\n0. a\n1. b\n2. c\n3. d\nAnswer: " and p.max_tokens == 1
    assert render(RETRIEVAL).max_tokens == 100
    assert render(skill_mc, options=PromptOptions(multi_choice_tokens=3)).max_tokens == 3


def test_skill_wise_number_only_suffix_for_phi_models():
    p = render(q("t", TaskType.MULTIPLE_CHOICE, "Q?\nAnswer: ", 1), options=PromptOptions(number_only=True))
    assert p.prompt == SYSTEM + "Q?\nAnswer: \n(Please output a number only) Output: \n"
    assert render(RETRIEVAL, options=PromptOptions(number_only=True)).prompt == SYSTEM + "Pick 3.\nOutput:"


def test_task_wise_multiple_choice_from_csv():
    p = render(MC, Protocol.TASK)
    assert p.prompt == SYSTEM + "Which one?\n0. red\n1. green\n2. blue\n3. black\nAnswer: "
    assert p.max_tokens == 4


def test_task_wise_letter_choices():
    p = render(MC, Protocol.TASK, options=PromptOptions(letter_choices=True))
    assert p.prompt == (SYSTEM + "Which one?\n(A) red\n(B) green\n(C) blue\n(D) black"
                        "\n\nPlease answer the question with a single letter indicating the choice. \nAnswer: ")
    assert answer_label(MC, PromptOptions(letter_choices=True)) == "C"
    assert answer_label(MC, PromptOptions()) == "2"


def test_task_wise_review_rating_prints_no_choices():
    assert render(REVIEW, Protocol.TASK).prompt == SYSTEM + "Rate: great!\nAnswer: "
    assert answer_label(REVIEW, PromptOptions(letter_choices=True)) == "5"


def test_task_specific_prompts_keep_the_official_double_space():
    assert format_subject("pt_keyphrase_retrieval") == " product type keyphrase retrieval"
    opts = PromptOptions(task_specific_prompt=True)
    assert render(MC, Protocol.TASK, options=opts).prompt.startswith(
        "The following is a multiple choice question about  attribute selection.\n\nWhich one?\n0. red")
    assert render(REVIEW, Protocol.TASK, options=opts).prompt == (
        "The following is a review rating prediction question.\n\nRate: great!\nAnswer: ")
    assert render(RETRIEVAL, Protocol.TASK, options=opts).prompt == (
        "You are required to perform the task of  product type keyphrase retrieval. Please follow the given "
        "instructions.\n\nPick 3.\nOutput:")


def test_task_wise_number_only_suffix_not_with_letters():
    suffix = "\n(Please output a number only) Output: \n"
    assert render(MC, Protocol.TASK, options=PromptOptions(number_only=True)).prompt.endswith("Answer: " + suffix)
    assert not render(MC, Protocol.TASK, options=PromptOptions(number_only=True, letter_choices=True)
                      ).prompt.endswith(suffix)


@pytest.mark.parametrize("task_type, budget", [
    (TaskType.MULTIPLE_CHOICE, 4), (TaskType.RETRIEVAL, 15), (TaskType.RANKING, 20), (TaskType.NER, 20),
    (TaskType.GENERATION, 128)])
def test_task_wise_token_budgets(task_type, budget):
    assert render(q("t", task_type, "x", 0), Protocol.TASK).max_tokens == budget


def test_chat_rendering_is_the_same_text_as_a_system_user_pair():
    completion = render(MC, Protocol.TASK)
    chat = render(MC, Protocol.TASK, Rendering.CHAT)
    assert chat.prompt is None and completion.messages is None
    assert chat.messages[0] == {"role": "system", "content": SYSTEM}
    assert chat.messages[1]["role"] == "user"
    assert chat.messages[0]["content"] + chat.messages[1]["content"] == completion.prompt
    assert (chat.rendering, chat.protocol) == (Rendering.CHAT, Protocol.TASK)


def test_a_reasoning_profile_asks_with_max_completion_tokens_and_no_temperature(tmp_path):
    from evaluator.runs.planning import plan
    from evaluator.runs.settings import RunConfig
    from servers.profiles import ModelProfile

    from builders import question

    q = question("accuracy", 1, text="Pick one")
    plain = ModelProfile(name="o", model="gpt-o", provider="openai", rendering="chat")
    thinking = plain.model_copy(update={"reasoning": True, "reasoning_budget": 2048, "reasoning_effort": "low"})
    [a] = plan([q], RunConfig(profile=plain, data=tmp_path))
    [b] = plan([q], RunConfig(profile=thinking, data=tmp_path))
    assert a.body["max_tokens"] == 1 and a.body["temperature"] == 0.0
    assert b.body["max_completion_tokens"] == 1 + 2048 and b.body["reasoning_effort"] == "low"
    assert "max_tokens" not in b.body and "temperature" not in b.body and a.key != b.key
