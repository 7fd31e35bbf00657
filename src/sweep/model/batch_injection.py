"""Batch injection as a column lookup: scvi-tools' ``FCLayers`` without multiplying zeros.

scvi-tools injects each categorical covariate (the batch first, then ``cat_list``'s covariates)
into a layer by concatenating its one-hot to the layer's input: ``[x, cont, one_hot_1, ...] @
W.T + b``. With CZI's 11,108 batch categories that is 11,108 input columns per decoder layer of
which one is 1 and the rest 0. The product of a one-hot with ``W`` is a column of ``W``, so

    [x, cont, one_hot(c_1), ...] @ W.T + b == x @ W[:, :n_x].T + b + cont @ W[:, cont cols].T
                                              + sum_k W[:, n_x + n_cont + offset_k + c_k]

with ``offset_k`` the widths of the covariates before ``k``. :class:`LookupFCLayers` computes
the right-hand side: same parameters (each ``nn.Linear`` keeps its full ``in_features`` weight,
so ``state_dict`` keys and shapes do not change), outputs equal to float rounding, and each
cell's gradient added into its categories' columns of the same weight's gradient (columns of
categories absent from the batch get zero, as the one-hot product gives them). In fp32 one
autograd function does the product and its backward (:class:`_LookupLinear`); under autocast
(``bf16-mixed``) autograd's own slicing and indexing do, cast as autocast casts them.

:func:`set_batch_injection` switches the ``FCLayers`` of a built module between the two by
changing their class (``LookupFCLayers`` is an ``FCLayers`` subclass with no state of its own):
nothing global is patched, the module moves between devices, pickles, saves and loads as
scvi-tools' own, and a model loaded with ``SCVI.load`` is scvi-tools' plain one.
"""

from __future__ import annotations

import torch
from scvi.nn import FCLayers
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

#: the values of ``trainer.batch_injection``
LOOKUP, ONE_HOT = "lookup", "one_hot"
MODES = (LOOKUP, ONE_HOT)


class LookupFCLayers(FCLayers):
    """scvi-tools' ``FCLayers`` whose categorical covariates are looked up, not multiplied.

    Same state, same layers, same order of application (BatchNorm over each sample of a 3-d
    input, LayerNorm, activation, dropout), the same checks of ``cat_list`` as
    ``FCLayers.forward``; only an injected ``nn.Linear`` is computed differently.
    """

    def _get_name(self) -> str:
        return "FCLayers"  # printed as scvi-tools' module (tests compare printed modules)

    def forward(self, x: torch.Tensor, *cat_list: torch.Tensor, cont: torch.Tensor | None = None):
        """``FCLayers.forward`` on ``x`` (cells, n_in) or (samples, cells, n_in).

        Parameters
        ----------
        x
            The layer input, float.
        cat_list
            One tensor per categorical covariate in ``n_cat_list`` order: codes (cells, 1),
            int64, or an already one-hot (cells, n_cat). Tensors beyond ``n_cat_list`` (the
            decoder is handed ``y``) are ignored, as by scvi-tools.
        cont
            Continuous covariates (cells, n_cont), or None.

        Returns
        -------
        torch.Tensor
            (cells, n_out) or (samples, cells, n_out), equal to ``FCLayers.forward``'s output.
        """
        columns, dense = self._covariate_inputs(cat_list, cont)
        for i, layers in enumerate(self.fc_layers):
            for layer in layers:
                if layer is None:
                    continue
                if isinstance(layer, nn.BatchNorm1d) and x.dim() == 3:
                    mps = x.device.type == "mps"  # scvi-tools clones each slice there
                    slices = [layer(s.clone() if mps else s).unsqueeze(0) for s in x]
                    x = torch.cat(slices, dim=0)
                elif isinstance(layer, nn.Linear) and self.inject_into_layer(i):
                    x = self._injected_linear(layer, x, columns, dense)
                else:
                    x = layer(x)
        return x

    def _covariate_inputs(
        self, cat_list: tuple, cont: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, list[tuple[int, torch.Tensor]]]:
        """The covariates as (a) column numbers counted from the first covariate column,
        (cells, covariates given as codes) int64, or None; (b) the inputs still multiplied:
        (first column, tensor) for ``cont`` and for any covariate given already one-hot."""
        if len(self.n_cat_list) > len(cat_list):
            raise ValueError("nb. categorical args provided doesn't match init. params.")
        n_cont = self.n_cov - sum(self.n_cat_list)
        dense = [(0, cont)] if cont is not None else []
        codes, start = [], n_cont
        for n_cat, cat in zip(self.n_cat_list, cat_list, strict=False):
            if n_cat and cat is None:
                raise ValueError("cat not provided while n_cat != 0 in init. params.")
            if n_cat <= 1:  # a covariate of one category is not injected
                continue
            if cat.size(1) == n_cat:
                dense.append((start, cat))  # already one-hot: multiplied as scvi-tools does
            else:
                code = cat.squeeze(-1).long()
                if code.device.type == "cpu" and code.numel():  # as one_hot checks (no GPU sync)
                    low, high = int(code.min()), int(code.max())
                    if low < 0 or high >= n_cat:
                        raise RuntimeError(f"category code {low}..{high} outside 0..{n_cat - 1}")
                codes.append(code + start)
            start += n_cat
        columns = torch.stack(codes, dim=-1) if codes else None
        return columns, dense

    def _injected_linear(
        self,
        linear: nn.Linear,
        x: torch.Tensor,
        columns: torch.Tensor | None,
        dense: list[tuple[int, torch.Tensor]],
    ) -> torch.Tensor:
        """``linear([x, covariates])`` as ``x``'s product plus the looked-up weight columns,
        plus the dense covariates' products; (cells, n_out) or (samples, cells, n_out)."""
        weight = linear.weight  # (n_out, n_x + n_cov)
        n_x = weight.shape[1] - self.n_cov
        if columns is None:
            out = F.linear(x, weight[:, :n_x], linear.bias)
        elif torch.is_autocast_enabled(x.device.type):
            # autograd's own ops, each cast as autocast casts it (the custom backward is fp32)
            out = F.linear(x, weight[:, :n_x], linear.bias)
            looked_up = weight.t()[columns + n_x].sum(dim=-2)  # W.T's rows are W's columns
            out = out + looked_up.to(out.dtype)  # out's dtype, as the one-hot path's
        else:
            out = _LookupLinear.apply(x, weight, linear.bias, columns + n_x)
        for start, part in dense:
            if x.dim() == 3:
                part = part.unsqueeze(0).expand(x.size(0), -1, -1)
            block = weight[:, n_x + start : n_x + start + part.size(-1)]
            out = out + F.linear(part.to(x.dtype), block)
        return out


class _LookupLinear(torch.autograd.Function):
    """``x @ W[:, :n_x].T + b + sum_k W[:, columns[:, k]].T``: an injected layer's product.

    Autograd's own slicing and indexing would give the weight two gradients, each the full
    weight's size and mostly zeros (one in W.T's layout), and add them: at 11,108 categories
    those fills, adds and layout copies cost a large part of what the lookup saves. Here the
    backward makes one gradient in the weight's layout, ``grad.T @ x`` in the ``x`` columns,
    zeros elsewhere, and each cell's ``grad`` added into its categories' columns
    (``index_add_``), what the one-hot product's gradient holds.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, columns):
        """``x`` (cells, n_x) or (samples, cells, n_x); ``weight`` (n_out, in_features);
        ``bias`` (n_out,) or None; ``columns`` (cells, covariates) int64, counted from 0:
        (cells, n_out) or (samples, cells, n_out)."""
        n_x = x.shape[-1]
        out = F.linear(x, weight[:, :n_x], bias)
        for k in range(columns.shape[1]):  # broadcast over the samples of a 3-d x
            out += weight.t()[columns[:, k]]
        ctx.save_for_backward(x, weight, columns)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight, columns = ctx.saved_tensors
        n_x = x.shape[-1]
        grad_x = grad_weight = grad_bias = None
        flat = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ weight[:, :n_x]
        if ctx.needs_input_grad[1]:
            grad_weight = torch.empty_like(weight, memory_format=torch.contiguous_format)
            grad_weight[:, :n_x] = flat.t() @ x.reshape(-1, n_x)
            grad_weight[:, n_x:] = 0
            per_cell = grad_out.sum(dim=0) if grad_out.dim() == 3 else grad_out
            for k in range(columns.shape[1]):
                grad_weight.index_add_(1, columns[:, k], per_cell.t())
        if ctx.needs_input_grad[2]:
            grad_bias = flat.sum(dim=0)
        return grad_x, grad_weight, grad_bias, None


def set_batch_injection(module: nn.Module, mode: str) -> list[str]:
    """Switch every ``FCLayers`` of ``module`` that injects a categorical covariate to ``mode``.

    Parameters
    ----------
    module
        A built scvi-tools module (e.g. ``SCVI(...).module``, a ``VAE``): its decoder and, with
        ``encode_covariates=True``, its encoders hold such layers.
    mode
        ``"lookup"`` (:class:`LookupFCLayers`) or ``"one_hot"`` (scvi-tools' ``FCLayers``).

    Returns
    -------
    list[str]
        The names (``module.named_modules()``) of the ``FCLayers`` switched, or already in
        ``mode``; state, parameters and buffers are untouched.
    """
    if mode not in MODES:
        raise ValueError(f"batch injection {mode!r} is not one of {list(MODES)}")
    cls = LookupFCLayers if mode == LOOKUP else FCLayers
    names = []
    for name, child in module.named_modules():
        if type(child) not in (FCLayers, LookupFCLayers) or not sum(child.n_cat_list):
            continue
        child.__class__ = cls
        names.append(name)
    return names
