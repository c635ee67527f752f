"""Naive per-step references of every cell, written one equation per line from
../shared/REFERENCES.md and differentiated by autograd. They share no code with
study/engine (the cell classes, the scan, the kernels); only the weight layout is common:
a = x W + s' R + b with W (in, G·H), R (Hr, G·H) and the blocks in the order of the cell's
`blocks`."""

import torch

sig = torch.sigmoid
tanh = torch.tanh


def hard_sigmoid(a):
    return torch.clamp(0.2 * a + 0.5, 0.0, 1.0)


def binary_gate(a):
    """Forward 1[a > 0]; backward the hard sigmoid's slope (straight-through)."""
    hard = hard_sigmoid(a)
    return hard + ((a > 0).to(a.dtype) - hard).detach()


def run(name, layer, x, s0, c0, truncated=False, steps=False):
    """Unroll variant `name` over x (T, B, in) with the layer's parameters.
    Returns h (T, B, H), and c (T, B, H) or None; with steps=True the per-step lists."""
    cell = layer.cell
    H = cell.H
    W, R, b = layer.W, layer.recurrent_weights(), layer.b
    P = dict(layer.extra)

    def block(t, n):
        k = cell.blocks.index(n)
        return t[..., k * H:(k + 1) * H]

    s, c = s0, c0
    hs, cs = [], []
    for t in range(x.shape[0]):
        xt = x[t]
        if name == "gru":
            xa, ha = xt @ W + b, s @ R
            r = sig(block(xa, "r") + block(ha, "r"))
            u = sig(block(xa, "u") + block(ha, "u"))
            n = tanh(block(xa, "n") + r * (block(ha, "n") + P["b_Rn"]))
            h = (1 - u) * n + u * s
            s = h
            hs.append(h)
            continue
        if name == "rnn":
            s = tanh(xt @ W + s @ R + b)
            hs.append(s)
            continue
        c_prev = c
        s_in = s.detach() if truncated else s  # Hochreiter97: no error through R to h'
        a = xt @ W + s_in @ R + b
        peep = P.get("peep")
        if name == "peephole":
            i = sig(block(a, "i") + peep[0] * c_prev)
            f = sig(block(a, "f") + peep[1] * c_prev)
            z = tanh(block(a, "z"))
            c = f * c_prev + i * z
            o = sig(block(a, "o") + peep[2] * c)
            h = o * tanh(c)
        elif name == "lstm":
            i = sig(block(a, "i"))
            f = sig(block(a, "f"))
            o = sig(block(a, "o"))
            z = tanh(block(a, "z"))
            c = f * c_prev + i * z
            h = o * tanh(c)
        elif name == "nfg":  # peepholes on i and o; f = 1
            i = sig(block(a, "i") + peep[0] * c_prev)
            z = tanh(block(a, "z"))
            c = c_prev + i * z
            o = sig(block(a, "o") + peep[1] * c)
            h = o * tanh(c)
        elif name == "nig":  # i = 1
            f = sig(block(a, "f") + peep[0] * c_prev)
            z = tanh(block(a, "z"))
            c = f * c_prev + z
            o = sig(block(a, "o") + peep[1] * c)
            h = o * tanh(c)
        elif name == "nog":  # o = 1
            i = sig(block(a, "i") + peep[0] * c_prev)
            f = sig(block(a, "f") + peep[1] * c_prev)
            z = tanh(block(a, "z"))
            c = f * c_prev + i * z
            h = tanh(c)
        elif name == "niaf":  # g = identity
            i = sig(block(a, "i") + peep[0] * c_prev)
            f = sig(block(a, "f") + peep[1] * c_prev)
            z = block(a, "z")
            c = f * c_prev + i * z
            o = sig(block(a, "o") + peep[2] * c)
            h = o * tanh(c)
        elif name == "noaf":  # k = identity
            i = sig(block(a, "i") + peep[0] * c_prev)
            f = sig(block(a, "f") + peep[1] * c_prev)
            z = tanh(block(a, "z"))
            c = f * c_prev + i * z
            o = sig(block(a, "o") + peep[2] * c)
            h = o * c
        elif name == "cifg":  # f = 1 − i
            i = sig(block(a, "i") + peep[0] * c_prev)
            f = 1 - i
            z = tanh(block(a, "z"))
            c = f * c_prev + i * z
            o = sig(block(a, "o") + peep[1] * c)
            h = o * tanh(c)
        elif name == "fgr":  # s = [h, i, f, o]; R (masked) carries the gates' feedback
            i = sig(block(a, "i") + peep[0] * c_prev)
            f = sig(block(a, "f") + peep[1] * c_prev)
            z = tanh(block(a, "z"))
            c = f * c_prev + i * z
            o = sig(block(a, "o") + peep[2] * c)
            h = o * tanh(c)
        elif name == "lstm1997":
            i = sig(block(a, "i"))
            o = sig(block(a, "o"))
            z = 4 * sig(block(a, "z")) - 2
            c = c_prev + i * z
            h = o * (2 * sig(c) - 1)
        elif name in ("hard", "binary"):
            gate = hard_sigmoid if name == "hard" else binary_gate
            i = gate(block(a, "i") + peep[0] * c_prev)
            f = gate(block(a, "f") + peep[1] * c_prev)
            z = tanh(block(a, "z"))
            c = f * c_prev + i * z
            o = gate(block(a, "o") + peep[2] * c)
            h = o * tanh(c)
        else:
            raise KeyError(name)
        s = torch.cat([h, i, f, o], 1) if name == "fgr" else h
        hs.append(h)
        cs.append(c)
    if steps:
        return hs, cs
    return torch.stack(hs), (torch.stack(cs) if cs else None)
