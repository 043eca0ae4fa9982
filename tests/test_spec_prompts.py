"""`alise bench spec`'s prompt selection (services/bench/spec_prompts.py): each prompt text once per set."""

from __future__ import annotations

from services.bench.spec_prompts import PromptSetName, select_prompt_sets

REWRITE_PROMPT = "Rewrite this paragraph in a friendlier tone: " + "The committee postponed the vote again. " * 12


def _record(record_id: str, prompt: str, num_llama2_tokens: int = 200) -> dict:
    return {"id": record_id, "prompt": prompt, "is_conversation_start": True, "prompt_llama2_tokens": num_llama2_tokens}


def test_a_text_that_occurs_under_two_ids_is_selected_once():
    from services.common.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("default")
    # ShareGPT holds some first turns twice under two ids; each text is 3 records here, 4 texts in all
    records = [_record(f"r{index}-{copy}", REWRITE_PROMPT + f"({index})") for index in range(4) for copy in range(3)]
    for index in range(4):  # the other two sets need 4 prompts each too
        records.append(_record(f"chat{index}", f"Name a cat, please ({index}).", 20))
        records.append(_record(f"code{index}", f"Fix this:\n```\nx = {index};\ny = 2;\n```\n", 60))
    for seed in range(5):
        chosen = select_prompt_sets(records, tokenizer, num_prompts=4, seed=seed, max_prompt_tokens=512)
        prompts = chosen[PromptSetName.SUMMARISE_REWRITE]
        assert len({prompt.token_ids for prompt in prompts}) == 4, seed  # without the rule: repeats at most seeds
