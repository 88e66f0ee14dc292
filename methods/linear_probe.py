"""Linear probe: a new linear head on frozen source-trained features, fitted on target shots."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dabench import Batch, Loss, Method, Uses, register_method


@register_method("linear-probe")
class LinearProbe(Method):
    """Linear probe: freeze the source-only network, fit a new softmax head on k target shots per class.

    min_W,b  mean CE(W·g(x) + b, y) + weight_decay · ‖W‖²  over the shots (x, y), with g the
    frozen source-only feature extractor (backbone + bottleneck, eval mode). Features are computed
    once and cached; the head is trained full-batch with L-BFGS (a convex problem).
    Classic transfer recipe, e.g. Kornblith, Shlens, Le. Do Better ImageNet Models Transfer Better? CVPR 2019.

    Data: the source-only network (trained without target labels) and the k × C labelled target
    shots; a few-shot row, tabled in its own label budget like fine-tuning.
    """

    protocol = "few-shot"
    uses = Uses(source_labels=False, target_shots=True, init="source-only")
    defaults = {"weight_decay": 1e-3, "max_iter": 200}
    citation = "Kornblith, Shlens, Le. Do Better ImageNet Models Transfer Better? CVPR 2019."

    def loss(self, batch: Batch, progress: float) -> Loss:
        # Only used if someone runs the probe through the step loop: CE on shots, frozen features.
        assert batch.x_shots is not None and batch.y_shots is not None  # uses.target_shots: the engine fills them
        with torch.no_grad():
            f = self.net.features(batch.x_shots)
        return self.combine({"ce_shots": F.cross_entropy(self.net.head(f), batch.y_shots)})

    @torch.no_grad()
    def _shot_features(self, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = ctx.data.batch_from(ctx.data.shots, torch.arange(len(ctx.data.shots), device=ctx.device), train=False)
        return self.net.features(x).float(), y

    def fit(self, ctx) -> None:
        for p in self.net.backbone.parameters():
            p.requires_grad_(False)
        for p in self.net.bottleneck.parameters():
            p.requires_grad_(False)
        self.eval()  # frozen BatchNorm statistics and no dropout in the feature extractor
        feats, labels = self._shot_features(ctx)
        head = nn.Linear(feats.shape[1], self.num_classes).to(feats.device)
        optimiser = torch.optim.LBFGS(
            head.parameters(), lr=1.0, max_iter=int(self.hp["max_iter"]), line_search_fn="strong_wolfe"
        )
        wd = float(self.hp["weight_decay"])

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            loss = F.cross_entropy(head(feats), labels) + wd * head.weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimiser.step(closure)
        self.net.head = head
        ctx.record_eval(self, step=0, losses={"ce_shots": F.cross_entropy(head(feats), labels).detach()})
