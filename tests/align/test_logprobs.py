"""Response log-probabilities: against a full-vocabulary reference (TRL's), the Engine's own decoding, and padding."""

import pytest
import torch

from vlstack.align.logprobs import encode_responses, load_engine, pack_sequences, response_ids, score_responses
from vlstack.align.preference import prompt_request
from vlstack.errors import ConfigError, InputError
from vlstack.models.language import decoder
from vlstack.synthetic.preferences import vqa_samples


@pytest.fixture(scope="module")
def engine(nano_checkpoint):
    return load_engine(str(nano_checkpoint))


@pytest.fixture(scope="module")
def requests():
    return [prompt_request(s, max_new_tokens=6) for s in vqa_samples(4, "train")]


def _batch(engine, requests):
    answers = ["red", "2", "left", "a purple triangle"]
    return encode_responses(engine, requests, [response_ids(engine, a) for a in answers])


def test_response_logprobs_match_trl_selective_log_softmax_on_full_logits(engine, requests):
    from trl.trainer.utils import selective_log_softmax

    batch = _batch(engine, requests)
    model = engine.model
    with torch.no_grad():
        scores = score_responses(model, batch, with_entropy=True)
        embeds = model.embed_inputs(batch["input_ids"], batch["pixel_values"])
        hidden = decoder(model.language_model)(inputs_embeds=embeds, attention_mask=batch["attention_mask"])[0]
        logits = model.language_model.get_output_embeddings()(hidden)[:, :-1].float()  # [B, T - 1, V]
    reference = selective_log_softmax(logits, batch["input_ids"][:, 1:])  # [B, T - 1]
    mask = batch["response_mask"][:, 1:].bool()
    assert torch.equal(scores.mask.bool(), mask)
    torch.testing.assert_close(scores.logprobs[mask], reference[mask], rtol=0, atol=1e-5)
    assert torch.all(scores.logprobs[~mask] == 0)
    entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    torch.testing.assert_close(scores.entropy[mask], entropy[mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(scores.sequence_logprobs(), (reference * mask).sum(dim=1), rtol=0, atol=1e-4)
    assert scores.mask.sum(dim=1).tolist() == [2, 2, 2, len(response_ids(engine, "a purple triangle"))]


def test_engine_greedy_tokens_are_the_argmax_of_the_scored_distribution(engine, requests):
    """The Engine's KV-cache decoding and the training-time scoring see the same distribution."""
    responses = [r.token_ids for r in engine.generate(requests)]
    batch = encode_responses(engine, requests, responses)
    with torch.no_grad():
        scores = score_responses(engine.model, batch, with_entropy=True)
        hidden = scores.hidden[scores.mask.bool()]
        best = engine.model.language_model.get_output_embeddings()(hidden).float().log_softmax(-1).max(-1).values
    torch.testing.assert_close(scores.logprobs[scores.mask.bool()], best, rtol=0, atol=1e-5)


def test_padding_does_not_change_a_rows_scores(engine, requests):
    batch = _batch(engine, requests)
    with torch.no_grad():
        together = score_responses(engine.model, batch).sequence_logprobs()
        alone = [score_responses(engine.model, _batch_row(batch, i)).sequence_logprobs() for i in range(4)]
    torch.testing.assert_close(together, torch.cat(alone), rtol=0, atol=1e-4)


def _batch_row(batch, i):
    width = int(batch["attention_mask"][i].sum())
    return {k: v[i : i + 1, :width] if k != "pixel_values" else v[i : i + 1] for k, v in batch.items()}


def test_pack_sequences_layout_and_bad_input():
    packed = pack_sequences([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], pad_id=0)
    assert packed["input_ids"].tolist() == [[1, 2, 3, 5, 6], [4, 7, 8, 9, 0]]
    assert packed["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert packed["response_mask"].tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 0]]
    with pytest.raises(InputError, match="response 1 has no tokens"):
        pack_sequences([[1], [2]], [[3], []], pad_id=0)
    with pytest.raises(InputError, match="2 prompts but 1 responses"):
        pack_sequences([[1], [2]], [[3]], pad_id=0)


def test_prompts_need_exactly_one_image_and_a_checkpoint(engine, requests):
    two = prompt_request(vqa_samples(1, "train")[0])
    two.images = two.images * 2
    with pytest.raises(InputError, match="request 1 has 2 images"):
        encode_responses(engine, [requests[0], two], [[1], [1]])
    with pytest.raises(ConfigError, match="set checkpoint=DIR"):
        load_engine(None)
