"""The training loop: steps, accumulation, validation, progress bar, JSON log, checkpoints."""

import contextlib
import json
import os
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint, data, distributed

# Test hook: "RANK:STEP" makes that rank raise after that many steps, to check that a
# failing rank ends the whole torchrun job with an error.
FAIL_AT_ENV = "SENET_KERNELS_TRAIN_FAIL_AT"


def _fail_hook():
    spec = os.environ.get(FAIL_AT_ENV)
    if not spec:
        return None
    rank, step = (int(v) for v in spec.split(":"))
    return rank, step


class EpochStats:
    """Running sums of one epoch on this rank: loss x images, correct top-1, images, image
    files skipped as unreadable (``data.SkipUnreadable``). Kept as one device tensor (no host
    sync per step); in checkpoints for exact resume."""

    SIZE = 4

    def __init__(self, device, values=None):
        if values is None:
            values = torch.zeros(self.SIZE, dtype=torch.float64, device=device)
        elif values.numel() < self.SIZE:  # a checkpoint from before the skipped count
            values = torch.cat([values, values.new_zeros(self.SIZE - values.numel())])
        self.values = values

    def add(self, logits, labels, loss, skipped=None):
        # In-place adds on the device: no host-to-device copy or sync per micro-batch.
        n = labels.numel()
        self.values[0] += loss.detach().double() * n
        self.values[1] += (logits.argmax(1) == labels).sum()
        self.values[2] += n
        if skipped is not None:
            self.values[3] += skipped.sum()

    def reduced(self):
        """(mean loss, top-1 %, image files skipped) over every rank."""
        total = distributed.all_reduce_sum(self.values.clone()).tolist()
        count = max(total[2], 1.0)
        return total[0] / count, 100.0 * total[1] / count, int(total[3])


def evaluate(model, loader, device, args):
    """Loss, top-1 and top-5 (%) over the whole validation set (every rank's share), and
    the number of image files skipped as unreadable (their places taken by others)."""
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    with torch.inference_mode(), _autocast(device, args.amp):
        for batch in loader:
            images, labels, skipped = _split_batch(batch)
            images, labels = _to_device(images, labels, device, args.channels_last)
            logits = model(images).float()
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top5 == labels[:, None]
            sums += torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                                 hits[:, 0].sum().double(), hits.any(1).sum().double(),
                                 torch.tensor(labels.numel(), dtype=torch.float64, device=device),
                                 torch.tensor(0 if skipped is None else skipped.sum().item(),
                                              dtype=torch.float64, device=device)])
    model.train()
    loss, top1, top5, count, skipped = distributed.all_reduce_sum(sums).tolist()
    count = max(count, 1.0)
    return {"val_loss": loss / count, "val_top1": 100 * top1 / count,
            "val_top5": 100 * top5 / count, "val_skipped_images": int(skipped)}


def _split_batch(batch):
    """(images, labels, files skipped per image or None) of a loader's batch: ImageFolder
    batches carry the third (``data.SkipUnreadable``), synthetic ones do not."""
    images, labels, *rest = batch
    return images, labels, rest[0] if rest else None


def _autocast(device, enabled):
    # bfloat16 needs no loss scaling; on the CPU autocast is off unless --amp asks.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _to_device(images, labels, device, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    images = images.to(device, non_blocking=True, memory_format=fmt)
    return images, labels.to(device, non_blocking=True)


class Trainer:
    """One rank's training run; ``run`` trains from ``start_step`` to the end."""

    def __init__(self, *, model, ddp_model, optimizer, scheduler, criterion, train_set,
                 val_set, args, env, device, start_step=0, epoch_stats=None):
        self.model, self.ddp_model = model, ddp_model
        self.optimizer, self.scheduler, self.criterion = optimizer, scheduler, criterion
        self.train_set, self.val_set = train_set, val_set
        self.args, self.env, self.device = args, env, device
        self.step = start_step
        self.steps_per_epoch = data.steps_per_epoch(len(train_set), args.global_batch)
        self.total_steps = args.epochs * self.steps_per_epoch
        self.last_step = min(self.total_steps, args.max_steps or self.total_steps)
        self.stats = EpochStats(device, epoch_stats)
        self.main = env.rank == 0
        self.log_path = os.path.join(args.output, "log.jsonl")
        self.checkpoint_path = os.path.join(args.output, "checkpoint-last.pt")
        self.fail_at = _fail_hook()
        self.last_lr = optimizer.param_groups[0]["lr"]

    def _save_due(self):
        return bool(self.args.save_every) and self.step % self.args.save_every == 0

    def save(self, keep=False):
        keep_as = os.path.join(self.args.output, f"checkpoint-step{self.step}.pt") if keep else None
        checkpoint.save(self.checkpoint_path, model=self.model, optimizer=self.optimizer,
                        scheduler=self.scheduler, step=self.step, epoch_stats=self.stats.values,
                        args=self.args, env=self.env, device=self.device, keep_as=keep_as)

    def _train_step(self, batches):
        """One optimizer step over this rank's ``accum_steps`` micro-batches."""
        args = self.args
        self.optimizer.zero_grad(set_to_none=True)
        for a in range(args.accum_steps):
            images, labels, skipped = _split_batch(next(batches))
            images, labels = _to_device(images, labels, self.device, args.channels_last)
            last = a == args.accum_steps - 1
            # DDP all-reduces gradients on the last micro-batch's backward only.
            sync = (contextlib.nullcontext() if last or not hasattr(self.ddp_model, "no_sync")
                    else self.ddp_model.no_sync())
            with sync:
                with _autocast(self.device, args.amp):
                    logits = self.ddp_model(images)
                    loss = self.criterion(logits.float(), labels)
                # Mean over the step's micro-batches: the same gradient as one big batch.
                (loss / args.accum_steps).backward()
            self.stats.add(logits.detach(), labels, loss, skipped)
        self.optimizer.step()
        self.last_lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used
        self.scheduler.step()
        self.step += 1

    def _log_epoch(self, epoch, steps, seconds, complete):
        loss, top1, skipped = self.stats.reduced()
        entry = {"epoch": epoch, "step": self.step, "steps": steps, "complete": complete,
                 "loss": loss, "top1": top1, "skipped_images": skipped, "lr": self.last_lr,
                 "images_per_s": steps * self.args.global_batch / max(seconds, 1e-9),
                 "time_s": seconds}
        if complete and self.val_set is not None:
            loader = data.val_loader(self.val_set, self.args, self.env, self.device.type == "cuda")
            # The plain module: ranks may get one batch more or less of the validation set,
            # and DDP's forward is a collective (it broadcasts buffers). Rank 0's BatchNorm
            # statistics (the checkpoint's) on every rank first, as DDP's next forward would.
            distributed.broadcast_buffers(self.model)
            entry.update(evaluate(self.model, loader, self.device, self.args))
        if self.main:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")
            shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in entry.items())
            tqdm.write(shown)
        return entry

    def _show_progress(self, bar, window):
        """Loss so far this epoch, images/s (all ranks) since ``window`` = (time, step), lr.
        Reads the loss from the device: a sync, hence only every --log-every steps."""
        now = time.perf_counter()
        rate = (self.step - window[1]) * self.args.global_batch / (now - window[0])
        loss_sum, _, count = self.stats.values.tolist()
        bar.set_postfix(loss=f"{loss_sum / max(count, 1):.4f}", img_s=f"{rate:.1f}",
                        lr=f"{self.last_lr:.4g}")
        return now, self.step

    def run(self):
        """Train to ``last_step``; returns the JSON log entries this run wrote."""
        args = self.args
        if self.main:
            os.makedirs(args.output, exist_ok=True)
        bar = tqdm(total=self.last_step, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not self.main or args.no_progress)
        entries = []
        try:
            while self.step < self.last_step:
                epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
                bar.set_description(f"epoch {epoch}")
                loader = data.train_loader(self.train_set, args, self.env, epoch, in_epoch,
                                           self.device.type == "cuda")
                batches = iter(loader)
                start, first_step = time.perf_counter(), self.step
                epoch_end = min((epoch + 1) * self.steps_per_epoch, self.last_step)
                window = (time.perf_counter(), self.step)
                while self.step < epoch_end:
                    self._train_step(batches)
                    bar.update(1)
                    if self.step < epoch_end and self._save_due():
                        self.save(keep=args.keep_checkpoints)
                    if self.fail_at == (self.env.rank, self.step):  # after the save: a crash
                        raise RuntimeError(f"rank {self.env.rank} fails after step {self.step}, "
                                           f"as {FAIL_AT_ENV} asks (test hook)")
                    if self.step % args.log_every == 0 and not bar.disable:
                        window = self._show_progress(bar, window)
                complete = self.step % self.steps_per_epoch == 0
                entries.append(self._log_epoch(epoch, self.step - first_step,
                                               time.perf_counter() - start, complete))
                if complete:
                    self.stats = EpochStats(self.device)
                # After the reset, so a checkpoint at an epoch's end starts the next one clean.
                self.save(keep=args.keep_checkpoints and self._save_due())
        finally:
            bar.close()
        return entries
