"""All seeds of a grokking study in one tensor, the way the papers' own code trains them without gnorm:
stacked parameters, an einsum forward pass, a hand-written AdamW, a per-seed clamp of ||W|| from a step
on, train and test loss and accuracy at the evaluation steps. ``gnorm bench`` runs this file as
``python batched_script.py ...`` in a fresh process and times the whole process against ``gnorm run``
of the same workload (W1 as whole processes; see gnorm_bench.whole_process).

It imports nothing from gnorm: its own data splits and initialisation (E ~ N(0,1)/sqrt(d),
W1 ~ N(0,1)/sqrt(2d), W2 ~ N(0,1)/sqrt(H), biases 0), the same work.

    python batched_script.py --p 59 --seeds 16 --steps 2000 --held-norm 54.8 --clamp-from 500 \
        --eval-steps 1,2,3,...,2000
"""

import argparse
import json

import torch
import torch.nn.functional as F

OPERATIONS = {"addition": lambda a, b, p: (a + b) % p, "multiplication": lambda a, b, p: (a * b) % p}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="addition", choices=sorted(OPERATIONS))
    parser.add_argument("--p", type=int, default=59)
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--hidden-dim", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--eval-steps", default="", help="comma-separated steps (instead of --every)")
    parser.add_argument("--train-fraction", type=float, default=0.4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1.0)
    parser.add_argument("--held-norm", type=float, default=0.0, help="clamp ||W|| to this (0: no clamp)")
    parser.add_argument("--clamp-from", type=int, default=0)
    args = parser.parse_args()
    p, d, hidden, seeds, lr = args.p, args.embed_dim, args.hidden_dim, args.seeds, args.lr

    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    pairs = torch.stack([a.flatten(), b.flatten()], dim=1)
    labels = OPERATIONS[args.task](pairs[:, 0], pairs[:, 1], p)
    n_train = round(args.train_fraction * len(pairs))
    eval_steps = ({int(s) for s in args.eval_steps.split(",")} if args.eval_steps
                  else set(range(args.every, args.steps + 1, args.every)) | {args.steps})

    torch.manual_seed(0)
    orders = [torch.randperm(len(pairs)) for _ in range(seeds)]
    train_x = torch.stack([pairs[o[:n_train]] for o in orders])
    train_y = torch.stack([labels[o[:n_train]] for o in orders])
    test_x = torch.stack([pairs[o[n_train:]] for o in orders])
    test_y = torch.stack([labels[o[n_train:]] for o in orders])
    E = (torch.randn(seeds, p, d) / d**0.5).requires_grad_()
    W1 = (torch.randn(seeds, 2 * d, hidden) / (2 * d) ** 0.5).requires_grad_()
    b1 = torch.zeros(seeds, hidden, requires_grad=True)
    W2 = (torch.randn(seeds, hidden, p) / hidden**0.5).requires_grad_()
    b2 = torch.zeros(seeds, p, requires_grad=True)
    params, decayed = [E, W1, b1, W2, b2], [True, True, False, True, False]
    m1 = [torch.zeros_like(t) for t in params]
    m2 = [torch.zeros_like(t) for t in params]
    member = torch.arange(seeds).unsqueeze(1)

    def forward(x):
        h = torch.cat([E[member, x[..., 0]], E[member, x[..., 1]]], dim=-1)
        h = F.gelu(torch.einsum("snk,skh->snh", h, W1) + b1[:, None])
        return torch.einsum("snh,shc->snc", h, W2) + b2[:, None]

    history = []
    for step in range(1, args.steps + 1):
        loss = F.cross_entropy(forward(train_x).flatten(0, 1), train_y.flatten()) * seeds
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for t, g, m, v, decay in zip(params, grads, m1, m2, decayed):
                if decay:
                    t.mul_(1 - lr * args.weight_decay)
                m.mul_(0.9).add_(g, alpha=0.1)
                v.mul_(0.999).addcmul_(g, g, value=0.001)
                t.sub_(lr * (m / (1 - 0.9**step)) / ((v / (1 - 0.999**step)).sqrt() + 1e-8))
            if args.held_norm and step >= args.clamp_from:
                norm = torch.sqrt(E.pow(2).sum((1, 2)) + W1.pow(2).sum((1, 2)) + W2.pow(2).sum((1, 2)))
                for t in (E, W1, W2):
                    t.mul_((args.held_norm / norm).view(-1, 1, 1))
            if step in eval_steps:
                train_logits, test_logits = forward(train_x), forward(test_x)
                history.append({
                    "step": step,
                    "train_loss": F.cross_entropy(train_logits.transpose(1, 2), train_y, reduction="none").mean(1).tolist(),
                    "train_accuracy": (train_logits.argmax(-1) == train_y).float().mean(1).tolist(),
                    "test_loss": F.cross_entropy(test_logits.transpose(1, 2), test_y, reduction="none").mean(1).tolist(),
                    "test_accuracy": (test_logits.argmax(-1) == test_y).float().mean(1).tolist(),
                })
    t_grok = [next((h["step"] for h in history if h["test_accuracy"][s] >= 0.9), None) for s in range(seeds)]
    print(json.dumps({"t_grok": t_grok, "evaluated_steps": [h["step"] for h in history],
                      "last": history[-1] if history else None}))


if __name__ == "__main__":
    main()
