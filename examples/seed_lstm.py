"""The PyTorch seed program (an LSTM reading each Fashion-MNIST image as 28 rows) on dptrain's engine.

Each image is read as 28 time steps of 28 pixels.

Only the imports differ from the PyTorch original:

    import torch                                   ->  import engine as torch
    import torch.nn as nn; import torch.optim      ->  from engine import nn, optim
    from torchvision import datasets, transforms   ->  from engine.data import datasets, transforms
    from torch.utils.data import DataLoader        ->  from engine.data import DataLoader

Full run (3 epochs, hidden 128, ~86-88 % test accuracy):   python examples/seed_lstm.py
Quick run:   python examples/seed_lstm.py --epochs 1 --limit 2000 --test-limit 500
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import data_root, parse_args  # noqa: E402

import engine as torch  # noqa: E402
from engine import nn, optim  # noqa: E402
from engine.data import DataLoader, Subset, datasets, transforms  # noqa: E402


class LSTMModel(nn.Module):
    def __init__(self, input_size, hidden_size, num_layers, output_size):
        super(LSTMModel, self).__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, output_size)

    def forward(self, x):
        h0 = torch.zeros(self.num_layers, x.shape[0], self.hidden_size).to(x.device)
        c0 = torch.zeros(self.num_layers, x.shape[0], self.hidden_size).to(x.device)
        out, _ = self.lstm(x, (h0, c0))
        out = self.fc(out[:, -1, :])        # the last time step
        return out


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], epochs=3, batch_size=64, lr=1e-3, argv=argv)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    root = data_root(args.data)

    # --- the seed program -------------------------------------------------------
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    train_dataset = datasets.FashionMNIST(root=root, train=True, transform=transform, download=True)
    test_dataset = datasets.FashionMNIST(root=root, train=False, transform=transform, download=True)
    if args.limit:
        train_dataset = Subset(train_dataset, range(min(args.limit, len(train_dataset))))
    if args.test_limit:
        test_dataset = Subset(test_dataset, range(min(args.test_limit, len(test_dataset))))
    train_loader = DataLoader(train_dataset, batch_size=args.batch_size, shuffle=True, seed=args.seed)
    test_loader = DataLoader(test_dataset, batch_size=args.batch_size, shuffle=False)

    input_size, hidden_size, num_layers, output_size = 28, 128, 1, 10
    model = LSTMModel(input_size, hidden_size, num_layers, output_size)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.Adam(model.parameters(), lr=args.lr)

    num_epochs = args.epochs
    for epoch in range(num_epochs):
        model.train()
        running, seen = 0.0, 0
        for images, labels in train_loader:
            images = images.reshape(-1, 28, 28)      # 28 time steps of 28 features
            outputs = model(images)
            loss = criterion(outputs, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running += loss.item() * labels.shape[0]
            seen += labels.shape[0]
        if args.verbose:
            print(f"Epoch [{epoch + 1}/{num_epochs}], Loss: {running / seen:.4f}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)

    model.eval()
    with torch.no_grad():
        correct = 0
        total = 0
        for images, labels in test_loader:
            images = images.reshape(-1, 28, 28)
            outputs = model(images)
            predicted = outputs.argmax(dim=1)
            total += labels.shape[0]
            correct += (predicted == labels).sum().item()
    accuracy = correct / total
    print(f"Test accuracy: {accuracy:.4f}")
    # -----------------------------------------------------------------------------

    print(f"train samples: {len(train_dataset)}  test samples: {total}  "
          f"wall time: {time.perf_counter() - t0:.1f} s")
    return accuracy


if __name__ == "__main__":
    main()
