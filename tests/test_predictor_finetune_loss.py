"""Ranking losses of the fine-tuned encoder, and the AlpacaEval all-generator lengths they read."""

import gzip
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from services.predictor import data  # noqa: E402
from services.predictor.finetune_loss import pairwise_loss, regression_loss, soft_pairwise_loss  # noqa: E402

NAN = float("nan")


def test_pairwise_loss_rewards_the_right_order_within_a_generator_only():
    targets = torch.tensor([[1.0, NAN], [3.0, NAN], [NAN, 9.0], [NAN, 0.5]])
    right = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 5.0], [0.0, 1.0]])
    wrong = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 5.0]])
    assert pairwise_loss(right, targets) < pairwise_loss(wrong, targets)
    # one answer per generator column: no within-generator pair, so no loss whatever the scores
    alone = torch.tensor([[1.0, NAN], [NAN, 2.0]])
    assert pairwise_loss(torch.zeros(2, 2, requires_grad=True), alone).item() == 0.0  # no pair in any column


def test_near_ties_give_no_pair():
    targets = torch.tensor([[1.00], [1.05]])
    assert pairwise_loss(torch.tensor([[5.0], [0.0]]), targets, min_log_gap=0.1).item() == 0.0


def test_regression_loss_averages_known_targets_per_row():
    scores = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    targets = torch.tensor([[2.0, NAN], [1.0, 3.0]])
    assert regression_loss(scores, targets).item() == pytest.approx((1.0 + (1.0 + 9.0) / 2) / 2)


def test_soft_pairs_follow_the_share_of_generators():
    soft = torch.tensor([[5.0, 5.0, 1.0], [1.0, 1.0, 5.0], [NAN, NAN, NAN]])  # row 0 longer for 2 of 3 generators
    agree = soft_pairwise_loss(torch.tensor([1.0, 0.0, 0.0]), soft)
    disagree = soft_pairwise_loss(torch.tensor([0.0, 1.0, 0.0]), soft)
    assert agree < disagree


def test_all_generator_lengths_join_instruction_texts_by_index(tmp_path):
    folder = tmp_path / "alpaca_eval"
    folder.mkdir()
    with gzip.open(tmp_path / data.ALPACA_EVAL_FILE, "wt", encoding="utf-8") as stream:
        for index, text in ((0, "first"), (1, "second")):
            stream.write(
                json.dumps(
                    {
                        "generator": "g",
                        "instruction_idx": index,
                        "instruction": text,
                        "output": "",
                        "instruction_llama2_tokens": 3,
                        "output_llama2_tokens": 9,
                    }
                )
                + "\n"
            )
    with gzip.open(tmp_path / data.ALL_GENERATOR_LENGTHS_FILE, "wt", encoding="utf-8") as stream:
        stream.write("generator,instruction_idx,dataset,instruction_llama2_tokens,output_chars,output_llama2_tokens\n")
        stream.write("b,0,x,3,10,40\na,0,x,3,10,20\na,1,x,3,10,7\na,5,x,3,10,7\n")  # index 5 has no text: skipped
    generators, lengths = data.load_all_generator_lengths(tmp_path)
    assert generators == ("a", "b") and set(lengths) == {"first", "second"}
    np.testing.assert_array_equal(lengths["first"], [20, 40])
    assert lengths["second"][0] == 7 and np.isnan(lengths["second"][1])
