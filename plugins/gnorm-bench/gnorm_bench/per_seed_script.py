"""A small grokking study written the way a researcher writes one without gnorm: one ``torch.nn.Module``
and one ``torch.optim.AdamW`` per seed, seeds one after another, train and test accuracy every few
steps. ``gnorm bench`` runs this file as ``python per_seed_script.py ...`` in a fresh process and
times the whole process against ``gnorm run`` of the same workload (W3; see gnorm_bench.whole_process).

It imports nothing from gnorm: its own data split and initialisation, the same work (modulus, widths,
training fraction, steps, evaluation schedule, optional clamp of ||W|| from a step on).

    python per_seed_script.py --task multiplication --p 83 --embed-dim 32 --hidden-dim 64 \
        --seeds 8 --steps 2000 --every 25 --train-fraction 0.4 --lr 1e-3 --weight-decay 1
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F

OPERATIONS = {"addition": lambda a, b, p: (a + b) % p, "multiplication": lambda a, b, p: (a * b) % p}


class MLP(torch.nn.Module):
    def __init__(self, p, embed_dim, hidden_dim):
        super().__init__()
        self.embedding = torch.nn.Embedding(p, embed_dim)
        self.hidden = torch.nn.Linear(2 * embed_dim, hidden_dim)
        self.readout = torch.nn.Linear(hidden_dim, p)

    def forward(self, pairs):
        return self.readout(F.gelu(self.hidden(self.embedding(pairs).flatten(1))))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="multiplication", choices=sorted(OPERATIONS))
    parser.add_argument("--p", type=int, default=83)
    parser.add_argument("--embed-dim", type=int, default=32)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--eval-steps", default="", help="comma-separated steps (instead of --every)")
    parser.add_argument("--train-fraction", type=float, default=0.4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1.0)
    parser.add_argument("--held-norm", type=float, default=0.0, help="clamp ||W|| to this (0: no clamp)")
    parser.add_argument("--clamp-from", type=int, default=0)
    args = parser.parse_args()

    p = args.p
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    pairs = torch.stack([a.flatten(), b.flatten()], dim=1)
    labels = OPERATIONS[args.task](pairs[:, 0], pairs[:, 1], p)
    n_train = round(args.train_fraction * len(pairs))
    eval_steps = ({int(s) for s in args.eval_steps.split(",")} if args.eval_steps
                  else set(range(args.every, args.steps + 1, args.every)) | {args.steps})

    results = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        order = torch.randperm(len(pairs))
        train, test = order[:n_train], order[n_train:]
        x, y, test_x, test_y = pairs[train], labels[train], pairs[test], labels[test]
        model = MLP(p, args.embed_dim, args.hidden_dim)
        weights = [model.embedding.weight, model.hidden.weight, model.readout.weight]
        biases = [model.hidden.bias, model.readout.bias]
        optimizer = torch.optim.AdamW([{"params": weights, "weight_decay": args.weight_decay},
                                       {"params": biases, "weight_decay": 0.0}], lr=args.lr)
        history = []
        for step in range(1, args.steps + 1):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if args.held_norm and step >= args.clamp_from:
                with torch.no_grad():
                    scale = args.held_norm / math.sqrt(sum(w.pow(2).sum().item() for w in weights))
                    for w in weights:
                        w.mul_(scale)
            if step in eval_steps:
                with torch.no_grad():
                    train_logits, test_logits = model(x), model(test_x)
                    history.append({
                        "step": step,
                        "train_loss": F.cross_entropy(train_logits, y).item(),
                        "train_accuracy": (train_logits.argmax(-1) == y).float().mean().item(),
                        "test_loss": F.cross_entropy(test_logits, test_y).item(),
                        "test_accuracy": (test_logits.argmax(-1) == test_y).float().mean().item(),
                    })
        grokked = next((h["step"] for h in history if h["test_accuracy"] >= 0.9), None)
        results.append({"seed": seed, "t_grok": grokked, "evaluated_steps": [h["step"] for h in history],
                        "last": history[-1] if history else None})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
