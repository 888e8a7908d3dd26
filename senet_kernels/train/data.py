"""Training data: ImageFolder or synthetic images, cut into global batches by step.

The order of the data is a function of (seed, epoch, step) alone, never of the number of
processes or of how far a previous run got:

* each epoch is one permutation of the dataset (``torch.randperm`` seeded by seed and
  epoch); step ``s`` of the epoch takes the global batch ``perm[s*G:(s+1)*G]``, G = batch
  size x processes x accumulation steps (the last incomplete batch is dropped);
* the global batch is cut into processes x accum micro-batches of ``batch_size`` consecutive
  images; micro-batch ``a * world_size + rank`` is this rank's a-th. So 2 processes with
  batch B see exactly the micro-batches that 1 process with batch B and 2 accumulation steps
  sees, which is what makes the two runs train the same parameters;
* random augmentation of image ``i`` in epoch ``e`` is seeded by (seed, e, i) in whatever
  worker loads it, so a resumed run (which starts at any step) gets the same pixels.

An ImageFolder image file that cannot be read (corrupt, truncated, not an image) does not
stop the run: ``SkipUnreadable`` warns, naming the file, and gives the next readable image
of the dataset in its place (so batches keep their size on every rank, and the data order
stays a function of the step); the log counts the files skipped.
"""

import os
import sys

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MASK = (1 << 63) - 1


def mix_seed(*values):
    """One 63-bit seed from integers (an FNV-style mix: distinct tuples, distinct seeds)."""
    h = 1469598103934665603
    for v in values:
        h = ((h ^ (int(v) & _MASK)) * 1099511628211) & _MASK
    return h


class SyntheticImages(Dataset):
    """``size`` images [3, image_size, image_size] with labels ``index % num_classes``.

    Image = a fixed 8x8 pattern of its class (upsampled) + unit Gaussian noise, both drawn
    from generators seeded by (seed, class) and (seed, index): the same on every rank and
    in every run, and learnable, so a smoke run shows the loss falling.
    """

    def __init__(self, size, num_classes, image_size, seed=0):
        self.size, self.num_classes = size, num_classes
        self.image_size, self.seed = image_size, seed
        self.classes = [f"class_{c}" for c in range(num_classes)]

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        label = index % self.num_classes
        g = torch.Generator().manual_seed(mix_seed(self.seed, 1, label))
        pattern = torch.randn(1, 3, 8, 8, generator=g)
        pattern = F.interpolate(pattern, size=(self.image_size,) * 2, mode="nearest")[0]
        g.manual_seed(mix_seed(self.seed, 2, index))
        noise = torch.randn(3, self.image_size, self.image_size, generator=g)
        return pattern + noise, label


class SeededAugmentation(Dataset):
    """Wraps a dataset whose transform is random: item ``(index, seed)`` loads ``index`` with
    torch's CPU generator seeded by ``seed`` (restored afterwards)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class StepBatches:
    """Batch sampler of one rank for one epoch, from ``start_step`` to the epoch's end.

    Yields, per step, ``accum_steps`` lists of ``(index, augmentation seed)`` (see the module
    docstring for which images they are).
    """

    def __init__(self, dataset_size, *, seed, epoch, batch_size, world_size, rank,
                 accum_steps=1, start_step=0):
        self.n, self.seed, self.epoch = dataset_size, seed, epoch
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.accum_steps, self.start_step = accum_steps, start_step
        self.global_batch = batch_size * world_size * accum_steps
        self.steps = steps_per_epoch(dataset_size, self.global_batch)

    def __len__(self):
        return (self.steps - self.start_step) * self.accum_steps

    def __iter__(self):
        g = torch.Generator().manual_seed(mix_seed(self.seed, 3, self.epoch))
        perm = torch.randperm(self.n, generator=g).tolist()
        for step in range(self.start_step, self.steps):
            base = step * self.global_batch
            for a in range(self.accum_steps):
                start = base + (a * self.world_size + self.rank) * self.batch_size
                yield [(i, mix_seed(self.seed, 4, self.epoch, i))
                       for i in perm[start:start + self.batch_size]]


class UnreadableImage(Exception):
    """An image file that the loader could not read (the cause is chained)."""

    def __init__(self, path, cause):
        super().__init__(f"{path}: {type(cause).__name__}: {cause}")
        self.path = path


def read_image(path):
    """torchvision's default image loader (PIL, RGB), raising ``UnreadableImage`` naming
    ``path`` for anything that goes wrong reading the file."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        raise UnreadableImage(path, e) from e


class SkipUnreadable(Dataset):
    """Items ``(image, label, skipped)`` of an ImageFolder built with ``loader=read_image``.

    When item ``index``'s file cannot be read, warns (on stderr, naming the file) and gives
    the next readable item (``index + 1``, ``+ 2``, ... around the end) in its place, with its
    own label; ``skipped`` counts the files passed over. Raises RuntimeError after
    ``MAX_IN_A_ROW`` unreadable files in a row (the data is broken, not one file).
    """

    MAX_IN_A_ROW = 64

    def __init__(self, dataset):
        self.dataset = dataset
        self.classes = dataset.classes

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        n = len(self.dataset)
        for skipped in range(min(n, self.MAX_IN_A_ROW)):
            try:
                image, label = self.dataset[(index + skipped) % n]
                return image, label, skipped
            except UnreadableImage as e:
                print(f"warning: skipping an unreadable image: {e}", file=sys.stderr, flush=True)
        raise RuntimeError(f"{min(n, self.MAX_IN_A_ROW)} unreadable images in a row from item "
                           f"{index} of {self.dataset.root!r} on: is --data an image dataset?")


def steps_per_epoch(dataset_size, global_batch):
    return dataset_size // global_batch


def _image_folder(root, transform):
    from torchvision.datasets import ImageFolder

    try:
        return SkipUnreadable(ImageFolder(root, transform=transform, loader=read_image))
    except (FileNotFoundError, RuntimeError) as e:  # no class folders / no images in them
        raise ValueError(f"--data: {root!r} is not a usable ImageFolder tree: {e}") from None


def build_datasets(args):
    """(train dataset, validation dataset or None, number of classes) for ``args``.

    Train items are ``(index, seed)``-addressed (``SeededAugmentation``) for ImageFolder
    data; synthetic items need no augmentation and take plain indices through the same
    wrapper. ImageFolder items are ``(image, label, skipped)`` (``SkipUnreadable``),
    synthetic ones ``(image, label)``. Raises ValueError for a path that is not an
    ImageFolder tree, or one of fewer than 2 classes.
    """
    if args.synthetic:
        classes = args.num_classes or 1000
        train = SyntheticImages(args.synthetic_size, classes, args.image_size, args.seed)
        return SeededAugmentation(train), None, classes

    from torchvision import transforms

    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_root = os.path.join(args.data, "train")
    val_root = os.path.join(args.data, "val")
    if not os.path.isdir(train_root):
        train_root, val_root = args.data, None
    # The paper's augmentation: random-size crops and horizontal flips.
    train = _image_folder(train_root, transforms.Compose([
        transforms.RandomResizedCrop(args.image_size), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), normalize]))
    val = None
    if val_root is not None and os.path.isdir(val_root) and args.eval:
        # Resize then center-crop 87.5% (256 -> 224), the usual single-crop evaluation.
        val = _image_folder(val_root, transforms.Compose([
            transforms.Resize(round(args.image_size / 0.875)),
            transforms.CenterCrop(args.image_size), transforms.ToTensor(), normalize]))
        if val.classes != train.classes:
            raise ValueError(f"--data: {val_root!r} has other classes than {train_root!r}")
    classes = len(train.classes)
    if classes < 2:  # every label the same: the loss goes to 0 and nothing is learnt
        raise ValueError(f"--data: {train_root!r} has {classes} class folder "
                         f"({', '.join(train.classes)}); a classifier needs at least 2")
    if args.num_classes is not None and args.num_classes < classes:
        raise ValueError(f"--num-classes {args.num_classes} is fewer than the {classes} "
                         f"classes in {train_root!r}")
    return SeededAugmentation(train), val, args.num_classes or classes


def train_loader(dataset, args, env, epoch, start_step, pin_memory):
    """The DataLoader of this rank's micro-batches for ``epoch`` from ``start_step``."""
    sampler = StepBatches(len(dataset), seed=args.seed, epoch=epoch, batch_size=args.batch_size,
                          world_size=env.world_size, rank=env.rank,
                          accum_steps=args.accum_steps, start_step=start_step)
    # Its own generator: a DataLoader draws its workers' base seed from the generator it
    # is given, else from torch's global one, which would leave dropout's random stream
    # depending on how many loaders a run created (a resumed run creates one more).
    generator = torch.Generator().manual_seed(mix_seed(args.seed, 6, epoch, start_step))
    return DataLoader(dataset, batch_sampler=sampler, num_workers=args.workers,
                      pin_memory=pin_memory, generator=generator)


def val_loader(dataset, args, env, pin_memory):
    """This rank's share of the validation set (every world_size-th image, none twice)."""
    indices = list(range(env.rank, len(dataset), env.world_size))
    subset = torch.utils.data.Subset(dataset, indices)
    return DataLoader(subset, batch_size=args.batch_size, shuffle=False,
                      num_workers=args.workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(0))  # see train_loader
