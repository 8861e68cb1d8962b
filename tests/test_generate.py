"""World-model decoding and loss: the KV-cache decode loop equals re-running the full model on
the growing sequence; constraints hold; the weighted loss ignores zero-weight tokens; the
objective with ring attention on sequence=4 x data=2 (zigzag layout) equals one device."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vidlang_jax import generate, sharding
from vidlang_jax.data import sequences
from vidlang_jax.losses.language_model import weighted_next_token_loss
from vidlang_jax.models.world_model import WorldModel, world_model_objective

VOCAB = sequences.Vocabulary(text_size=40, num_codes=30)
TINY = dict(vocab_size=VOCAB.size, width=32, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
            block_size=16)


def unboxed(tree):
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if hasattr(x, 'unbox') else x,
                      tree, is_leaf=lambda x: hasattr(x, 'unbox'))


@pytest.fixture(scope='module', params=[True, False], ids=['scan', 'unrolled'])
def model_and_params(request):
  model = WorldModel(**TINY, scan=request.param)
  params = unboxed(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))['params'])
  # Sharper logits than at init, so that greedy choices are not near-ties.
  params = jax.tree.map(lambda x: x * 3.0, params)
  return model, params


def test_kv_cache_decoding_equals_full_forward(model_and_params):
  model, params = model_and_params
  prompt = np.random.default_rng(0).integers(0, VOCAB.size, (3, 7))
  generated = generate.Generator(model)(params, prompt, 6)
  sequence = jnp.asarray(prompt)
  for _ in range(6):  # greedy, recomputing everything each step
    logits = model.apply({'params': params}, sequence)
    sequence = jnp.concatenate([sequence, jnp.argmax(logits[:, -1:], -1)], axis=1)
  np.testing.assert_array_equal(generated, np.asarray(sequence[:, 7:]))


def test_video_constraints_give_decodable_frames(model_and_params):
  model, params = model_and_params
  allowed = generate.video_constraints(VOCAB, num_frames=3, tokens_per_frame=4)
  prompt = np.array([[2, 5, 6, 3, VOCAB.special('vision_start')]])
  ids = generate.Generator(model, temperature=1.0, top_k=5)(params, prompt, len(allowed),
                                                            jax.random.key(1), allowed)[0]
  layout = sequences.frame_layout(VOCAB, 3, 4)[1:]
  np.testing.assert_array_equal(ids[layout >= 0], layout[layout >= 0])
  assert VOCAB.is_video(ids[layout < 0]).all()


def test_top_k_sampling_stays_in_the_top_k():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(64, VOCAB.size)))
  picks = generate.sample_token(logits, jax.random.key(0), 1.0, 3)
  top3 = np.argsort(-np.asarray(logits), axis=-1)[:, :3]
  assert all(p in row for p, row in zip(np.asarray(picks), top3))


@pytest.mark.parametrize('temperature', [1.0, 2.0])
def test_top_k_samples_the_renormalised_softmax(temperature):
  """20,000 draws from one row: the top 3 ids at softmax(logits / T) renormalised over them,
  nothing else; greedy (T = 0) and top-1 always give the argmax."""
  row = np.array([2.0, 1.0, 0.5, 0.4, -1.0, 3.0])  # ranks: 5, 0, 1, then 2 (cut)
  logits = jnp.asarray(np.tile(row, (20_000, 1)))
  picks = np.asarray(generate.sample_token(logits, jax.random.key(0), temperature, 3))
  top = np.array([5, 0, 1])
  want = np.exp(row[top] / temperature) / np.exp(row[top] / temperature).sum()
  got = np.array([(picks == i).mean() for i in top])
  np.testing.assert_allclose(got, want, atol=0.015)  # ~4 standard errors
  assert got.sum() == 1.0
  for temperature, top_k in [(0.0, 0), (0.0, 3), (1.0, 1)]:
    greedy = generate.sample_token(logits[:100], jax.random.key(1), temperature, top_k)
    assert (np.asarray(greedy) == 5).all()


def test_sampled_generation_differs_from_greedy(model_and_params):
  model, params = model_and_params
  prompt = np.random.default_rng(0).integers(0, VOCAB.size, (4, 5))
  greedy = generate.Generator(model)(params, prompt, 8)
  sampler = generate.Generator(model, temperature=1.0, top_k=10)
  first, again = (sampler(params, prompt, 8, jax.random.key(seed)) for seed in (0, 0))
  np.testing.assert_array_equal(first, again)  # one key, one sample
  assert (first != greedy).any() and (sampler(params, prompt, 8, jax.random.key(1)) != first).any()


def test_weighted_loss_by_hand_per_modality():
  """Four positions over a 3-id vocabulary: text (weight 0.5), video (2), text (0: not
  trained), text (1)."""
  logits = jnp.asarray([[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [5.0, 1.0, 0.0], [0.0, 3.0, 1.0]]])
  targets = jnp.asarray([[1, 0, 2, 1]])
  weights = jnp.asarray([[0.5, 2.0, 0.0, 1.0]])
  modality = jnp.asarray([[0, 1, 0, 0]])
  loss, metrics = weighted_next_token_loss(logits, targets, weights, modality)
  nll = [np.log(3.0),  # uniform over 3 ids
         np.log(np.exp(2.0) + 2.0) - 2.0,  # the target has logit 2, the others 0
         None,
         np.log(1.0 + np.exp(3.0) + np.exp(1.0)) - 3.0]
  np.testing.assert_allclose(loss, (0.5 * nll[0] + 2.0 * nll[1] + nll[3]) / 3.5, rtol=1e-6)
  # Per modality: the unweighted mean over its trained tokens.
  np.testing.assert_allclose(metrics['text_loss'], (nll[0] + nll[3]) / 2, rtol=1e-6)
  np.testing.assert_allclose(metrics['video_loss'], nll[1], rtol=1e-6)
  # argmax: id 0 (ties go to the first), 0, -, 1: right at the video and the last text token.
  np.testing.assert_allclose(metrics['accuracy'], 3.0 / 3.5, rtol=1e-6)
  assert int(metrics['trained_tokens']) == 3


def test_weighted_loss_ignores_zero_weight_tokens():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 10, VOCAB.size)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, VOCAB.size, (2, 10)))
  weights = jnp.asarray((np.arange(10) >= 4) * np.ones((2, 1)), jnp.float32)
  modality = jnp.asarray(np.arange(10) % 2 * np.ones((2, 1), int))
  loss_fn = lambda lg: weighted_next_token_loss(lg, targets, weights, modality)[0]
  grads = jax.grad(loss_fn)(logits)
  assert float(jnp.abs(grads[:, :4]).max()) == 0.0 and float(jnp.abs(grads[:, 4:]).max()) > 0
  _, metrics = weighted_next_token_loss(logits, targets, weights, modality)
  assert int(metrics['trained_tokens']) == 12


def packed_rows(batch=4, length=128, seed=0):
  """Real packed documents from the sequence pipeline (both orders, a needle document)."""
  import grain

  rng = np.random.default_rng(seed)
  docs = []
  for i in range(12):
    tokens = rng.integers(0, VOCAB.num_codes, (2, 3, 3))
    text = np.concatenate([[2], rng.integers(4, VOCAB.text_size, 5 + i % 4), [3]])
    docs.append(sequences.clip_document(VOCAB, tokens, text, sequences.ORDERS[i % 2]))
  filler = [np.concatenate([[2], rng.integers(4, 40, 6), [3]]) for _ in range(10)]
  docs.append(sequences.needle_document(VOCAB, filler, 90, [(5, np.array([7, 8]))], [0.3], [0]))
  rows = list(sequences.packed_dataset(grain.MapDataset.source(docs).to_iter_dataset(), length,
                                       num_bins=batch, seed=0))[:batch]
  return {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}


def objective_loss(attention, mesh_shape, batch, devices=None):
  model = WorldModel(**TINY, attention=attention, scan=False)
  config = ml_collections.ConfigDict(dict(sequence_layout='zigzag'))
  objective = world_model_objective(model, config)
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1, sequence=1) | mesh_shape, devices)
  with sharding.use_mesh(mesh):
    params = unboxed(jax.jit(lambda: objective.init(jax.random.key(0), batch))())
    placed = {k: jax.device_put(v, sharding.batch_sharding(mesh, 2)) for k, v in batch.items()}
    loss, metrics = jax.jit(lambda p, b: objective.loss(p, b, None))(params, placed)
  return float(loss), jax.device_get(metrics)


def test_objective_on_sequence_and_data_mesh_equals_one_device():
  batch = packed_rows()
  assert int(batch['segment_ids'].max()) >= 2  # several documents per row
  ref_loss, ref_metrics = objective_loss('dot_product', {}, batch, jax.devices()[:1])
  loss, metrics = objective_loss('ring', dict(sequence=4, data=2), batch)
  assert abs(loss - ref_loss) < 1e-4, (loss, ref_loss)
  for key in ('text_loss', 'video_loss', 'accuracy'):
    assert abs(float(metrics[key]) - float(ref_metrics[key])) < 1e-4, key


def test_accuracy_is_argmax_accuracy_with_ties():
  """The accuracy metric counts a token right exactly when argmax (the first largest logit)
  is the target, on logits with many ties."""
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.integers(0, 3, (2, 64, 11)).astype(np.float32))
  targets = jnp.asarray(rng.integers(0, 11, (2, 64)))
  weights = jnp.ones((2, 64))
  _, metrics = weighted_next_token_loss(logits, targets, weights, jnp.zeros((2, 64), jnp.int32))
  expected = np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(targets))
  np.testing.assert_allclose(metrics['accuracy'], expected, rtol=1e-6)
