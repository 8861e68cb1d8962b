"""Image -> video transfer experiment, step 1: train a tiny transformers CLIPModel on SINGLE
FRAMES of moving_shapes/small training clips with their captions (torch, CPU), and save it as a
`save_pretrained` folder that `vidlang convert hf_clip` reads.

Frames come from our own pipeline (`vidlang_jax.data.pipeline.eval_batches` over the train
split: 8 frames spread over the clip, central 32x32 crop, `pixels.normalize`), so the model
sees exactly our normalised frames; the folder's preprocessor_config.json declares our ImageNet
statistics, which the converter folds into the patch embedding (a no-op here). Captions are
tokenized with the dataset's own tokenizer (BOS 2, EOS 3, PAD 0; max_len 32), copied into the
folder as tokenizer.json.

  .venv/bin/python benchmarks/transfer/train_tiny_clip_frames.py --out runs/hf_clip_frames \
      --steps 120 --warmup 20 --clips 6000
"""

import argparse
import json
import os
import shutil
import time

import numpy as np
import torch
import transformers

from vidlang_jax import config as config_lib
from vidlang_jax import pixels
from vidlang_jax.data import caption_tokenizer, pipeline


def frames_and_text(data, split, max_examples):
  videos, texts = [], []
  for batch in pipeline.eval_batches(data, split, 200, max_examples=max_examples):
    m = batch['mask']
    videos.append(batch['video'][m].astype(np.float16))  # [b, 8, 32, 32, 3], normalised
    texts.append(batch['text'][m])
  return np.concatenate(videos), np.concatenate(texts)


def recall(a, b, ks=(1, 5)):
  sim = a @ b.T
  rank = (sim > np.diag(sim)[:, None]).sum(1)
  return {f'R@{k}': float((rank < k).mean()) for k in ks}


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--out', required=True)
  p.add_argument('--steps', type=int, default=800)
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--lr', type=float, default=1e-3)
  p.add_argument('--warmup', type=int, default=50)
  p.add_argument('--clips', type=int, default=20000)
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args()
  torch.manual_seed(args.seed)
  torch.set_num_threads(args.threads)
  rng = np.random.default_rng(args.seed)

  # moving_shapes/small, 8 x 32x32, our tokenizer
  data = config_lib.load('configs/two_tower.py:tiny').data
  data.num_threads = args.threads
  tokenizer_file = pipeline.tokenizer_path(data)
  vocab = caption_tokenizer.load_tokenizer(tokenizer_file).get_vocab_size()
  t0 = time.time()
  train_v, train_t = frames_and_text(data, 'train', args.clips)
  test_v, test_t = frames_and_text(data, 'test', None)
  print(f'decoded {len(train_v)} train / {len(test_v)} test clips in {time.time() - t0:.0f}s; '
        f'vocab {vocab}', flush=True)

  config = transformers.CLIPConfig(
      text_config=dict(vocab_size=vocab, hidden_size=128, intermediate_size=256,
                       num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32,
                       bos_token_id=caption_tokenizer.BOS_ID,
                       eos_token_id=caption_tokenizer.EOS_ID,
                       pad_token_id=caption_tokenizer.PAD_ID, hidden_act='quick_gelu'),
      vision_config=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, image_size=32, patch_size=8,
                         hidden_act='quick_gelu'),
      projection_dim=128)
  model = transformers.CLIPModel(config)
  opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / args.warmup) * 0.5
                                            * (1 + np.cos(np.pi * min(1.0, s / args.steps))))

  def to_pixels(v):  # [b, h, w, 3] normalised (ours) -> torch [b, 3, h, w]
    return torch.from_numpy(np.ascontiguousarray(v.astype(np.float32).transpose(0, 3, 1, 2)))

  def evaluate():  # middle frame of each test clip vs its caption
    model.eval()
    with torch.no_grad():
      img, txt = [], []
      for i in range(0, len(test_v), 250):
        img.append(model.get_image_features(pixel_values=to_pixels(test_v[i:i + 250, 4])))
        txt.append(model.get_text_features(input_ids=torch.from_numpy(
            test_t[i:i + 250].astype(np.int64))))
    model.train()
    norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    feat = lambda out: (out if torch.is_tensor(out) else out.pooler_output)
    img = norm(torch.cat([feat(x) for x in img]).numpy())
    txt = norm(torch.cat([feat(x) for x in txt]).numpy())
    return {'t2i': recall(txt, img), 'i2t': recall(img, txt)}

  curve = []
  t0 = time.time()
  model.train()
  for step in range(args.steps):
    idx = rng.choice(len(train_v), args.batch, replace=False)
    frame = rng.integers(0, train_v.shape[1], args.batch)  # one random frame per clip
    text = train_t[idx]
    # Causal text tower pooled at the first EOS: trailing padding changes nothing; drop it.
    text = text[:, :int((text == caption_tokenizer.EOS_ID).argmax(1).max()) + 1]
    out = model(input_ids=torch.from_numpy(text.astype(np.int64)),
                pixel_values=to_pixels(train_v[idx, frame]), return_loss=True)
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    sched.step()
    curve.append(float(out.loss.detach()))
    if step % 50 == 0 or step == args.steps - 1:
      print(f'step {step} loss {np.mean(curve[-50:]):.3f} (this batch {curve[-1]:.3f}) '
            f'logit_scale {float(model.logit_scale.exp()):.1f} {time.time() - t0:.0f}s',
            flush=True)
  train_s = time.time() - t0
  metrics = evaluate()
  print('test frame retrieval (middle frame):', json.dumps(metrics), flush=True)

  os.makedirs(args.out, exist_ok=True)
  model.save_pretrained(args.out)
  shutil.copy(tokenizer_file, os.path.join(args.out, 'tokenizer.json'))
  with open(os.path.join(args.out, 'preprocessor_config.json'), 'w') as f:
    json.dump(dict(image_mean=pixels.MEAN_RGB.tolist(), image_std=pixels.STD_RGB.tolist()), f)
  summary = dict(steps=args.steps, batch=args.batch, lr=args.lr, clips=len(train_v),
                 loss_first=curve[0], loss_first50=float(np.mean(curve[:50])),
                 loss_last50=float(np.mean(curve[-50:])), train_s=train_s,
                 test_frame_retrieval=metrics, curve=curve)
  with open(os.path.join(args.out, 'train_summary.json'), 'w') as f:
    json.dump(summary, f)
  print(json.dumps({k: v for k, v in summary.items() if k != 'curve'}), flush=True)


if __name__ == '__main__':
  main()
