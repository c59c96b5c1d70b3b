"""``demo-shop``: the Kernel app the example DAGs invoke.

It is an ordinary Kernel app written with the official SDK (``pip install kernel``), so the same file runs on
Kernel itself (``kernel deploy app.py`` from this folder) and on the provider's local emulator
(``kernel-emulator --app example_dags/demo_app/app.py``, which ``make demo`` starts for you).

A real app would drive a browser here, e.g. ``kernel.Kernel().browsers.create(invocation_id=ctx.invocation_id)``
and Playwright over CDP; to stay runnable offline, these actions only pretend: they sleep a little, print what
they are doing (``print()`` lines become the invocation's live log, copied into the Airflow task log) and return
deterministic JSON computed from their input.

Actions (payload -> output):

* ``scrape_prices``  ``{"date", "store"}`` -> ``{"date", "store", "prices": [{"sku", "name", "price"}, ...]}``
* ``summarize``      the output of ``scrape_prices`` -> ``{"date", "store", "items", "min", "max", "average"}``
* ``lookup_product`` ``{"sku"}`` -> ``{"sku", "name", "list_price"}`` (about one second: fine for a sync invoke)
* ``check_stock``    ``{"sku"}`` -> ``{"sku", "in_stock", "quantity"}``
* ``crawl_catalog``  ``{"category", "pages"}`` -> ``{"category", "pages", "products": [...]}`` (a few seconds)
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import kernel
from kernel import KernelContext

app = kernel.App("demo-shop")

# The shop's catalogue: sku -> (name, category, list price).
CATALOG: dict[str, tuple[str, str, float]] = {
    "A-100": ("Espresso cup", "kitchen", 4.50),
    "A-200": ("Milk jug", "kitchen", 12.00),
    "B-300": ("Desk lamp", "office", 29.90),
    "B-400": ("Notebook", "office", 3.20),
    "C-500": ("Rain jacket", "outdoor", 79.00),
    "C-600": ("Water bottle", "outdoor", 15.50),
}


def _number(*parts: str, modulo: int) -> int:
    """A stable pseudo-random number in ``range(modulo)`` (same input, same number, on every machine)."""
    digest = hashlib.sha256("|".join(parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") % modulo


def _args(payload: Any) -> dict[str, Any]:
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise ValueError(f"expected a JSON object as payload, got {type(payload).__name__}")
    return payload


def _sku(payload: Any) -> str:
    sku = _args(payload).get("sku")
    if sku not in CATALOG:
        raise ValueError(f"unknown sku {sku!r}; known: {', '.join(sorted(CATALOG))}")
    return str(sku)


@app.action("scrape_prices")
async def scrape_prices(ctx: KernelContext, payload: Any) -> dict[str, Any]:
    """Read today's price of every product of one store (about 2 s)."""
    args = _args(payload)
    date = str(args.get("date") or time.strftime("%Y-%m-%d"))
    store = str(args.get("store") or "main")
    print(f"[{ctx.invocation_id}] opening the price list of store {store!r} for {date}")
    await asyncio.sleep(1.0)
    prices = []
    for sku, (name, _category, list_price) in CATALOG.items():
        # -10 % .. +10 % around the list price, fixed for a given date and store
        change = (_number(date, store, sku, modulo=21) - 10) / 100
        prices.append({"sku": sku, "name": name, "price": round(list_price * (1 + change), 2)})
    await asyncio.sleep(1.0)
    print(f"read {len(prices)} prices")
    return {"date": date, "store": store, "prices": prices}


@app.action("summarize")
def summarize(ctx: KernelContext, payload: Any) -> dict[str, Any]:
    """Summarize a ``scrape_prices`` result (about 1 s; a plain ``def`` handler works as well as ``async``)."""
    args = _args(payload)
    prices = [float(p["price"]) for p in args.get("prices") or []]
    if not prices:
        raise ValueError("payload has no prices: pass the output of scrape_prices")
    print(f"summarizing {len(prices)} prices of store {args.get('store')!r}")
    time.sleep(1.0)
    return {
        "date": args.get("date"),
        "store": args.get("store"),
        "items": len(prices),
        "min": min(prices),
        "max": max(prices),
        "average": round(sum(prices) / len(prices), 2),
    }


@app.action("lookup_product")
def lookup_product(ctx: KernelContext, payload: Any) -> dict[str, Any]:
    """Look one product up (about 1 s: short enough for a synchronous invocation)."""
    sku = _sku(payload)
    name, _category, list_price = CATALOG[sku]
    print(f"looking up {sku}")
    time.sleep(1.0)
    return {"sku": sku, "name": name, "list_price": list_price}


@app.action("check_stock")
async def check_stock(ctx: KernelContext, payload: Any) -> dict[str, Any]:
    """Check the stock level of one product (about 1 s)."""
    sku = _sku(payload)
    print(f"checking stock of {sku}")
    await asyncio.sleep(1.0)
    quantity = _number("warehouse", sku, modulo=4) * 5  # 0, 5, 10 or 15
    print(f"{sku}: {quantity} in stock")
    return {"sku": sku, "in_stock": quantity > 0, "quantity": quantity}


@app.action("crawl_catalog")
async def crawl_catalog(ctx: KernelContext, payload: Any) -> dict[str, Any]:
    """Walk through the catalogue page by page (about 1 s per page, 3 pages by default)."""
    args = _args(payload)
    category = args.get("category")
    pages = max(1, min(int(args.get("pages", 3)), 10))
    print(f"crawling {pages} page(s) of category {category or 'all'!r}")
    for page in range(1, pages + 1):
        await asyncio.sleep(1.0)
        print(f"page {page}/{pages} done")
    products = sorted(sku for sku, (_n, cat, _p) in CATALOG.items() if category in (None, cat))
    return {"category": category, "pages": pages, "products": products}
