"""`batcher auth`, `batcher catalog` and `batcher wallet`: look at an account before a run.

The API key comes from the environment only (UGIFTME_API_KEY / GIFQ_API_TOKEN),
never from a flag. Every failure is one line on stderr with exit code 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import click

from batcher.cli.common import (
    echo_json,
    handle_errors,
    json_option,
    provider_options,
    resolve_settings,
)
from batcher.cli.terminal import echo
from batcher.core.models import Balance, Product, WalletTransaction
from batcher.core.money import money_str
from batcher.services import (
    account_info,
    list_balances,
    list_campaigns,
    list_products,
    list_transactions,
)

# ---------------------------------------------------------------------------
# Commands


@click.command()
@provider_options
@json_option
@handle_errors
def auth(provider: str, base_url: str | None, as_json: bool) -> None:
    """Check the API key and show which account it belongs to."""
    settings = resolve_settings(provider, base_url)
    account = account_info(settings)
    if as_json:
        echo_json(
            {
                "provider": settings.provider,
                "base_url": settings.base_url,
                "account_id": account.account_id,
                "name": account.name,
                "email": account.email,
                "plan": account.plan,
                "status": account.status,
            },
            "batcher.auth/1",
        )
        return
    echo(f"Account: {account.name or '-'} ({account.account_id})")
    if account.email:
        echo(f"Email:   {account.email}")
    echo(f"Plan:    {account.plan or '-'}")
    echo(f"Status:  {account.status or '-'}")


@click.command()
@click.option(
    "--search", default=None, help="Only products whose code, name or merchant contain TEXT."
)
@click.option("--currency", default=None, help="Only products in this currency, e.g. GBP.")
@json_option
@provider_options
@handle_errors
def catalog(
    search: str | None, currency: str | None, as_json: bool, provider: str, base_url: str | None
) -> None:
    """List the products this account can order."""
    products = list_products(resolve_settings(provider, base_url), search=search, currency=currency)
    if as_json:
        echo_json(
            {"products": [_product_json(product) for product in products]}, "batcher.catalog/1"
        )
    elif not products:
        echo("No products match.", err=True)
    else:
        echo(render_table(_PRODUCT_HEADERS, [_product_row(p) for p in products]))


@click.command()
@json_option
@provider_options
@handle_errors
def campaigns(as_json: bool, provider: str, base_url: str | None) -> None:
    """List the payout campaigns (GIFQ) that --payouts --campaign ID can use."""
    found = list_campaigns(resolve_settings(provider, base_url))
    if as_json:
        echo_json({"campaigns": [c.model_dump(mode="json") for c in found]}, "batcher.campaigns/1")
    elif not found:
        echo("No campaigns.", err=True)
    else:
        rows = [(c.campaign_id, c.title, c.status, ", ".join(c.brands)) for c in found]
        echo(render_table(("ID", "TITLE", "STATUS", "BRANDS"), rows))


@click.command()
@click.option("--transactions", is_flag=True, help="List wallet movements instead of balances.")
@json_option
@provider_options
@handle_errors
def wallet(transactions: bool, as_json: bool, provider: str, base_url: str | None) -> None:
    """Show wallet balances per currency, or the wallet's transactions."""
    settings = resolve_settings(provider, base_url)
    if transactions:
        _print_transactions(list_transactions(settings), as_json=as_json)
    else:
        _print_balances(list_balances(settings), as_json=as_json)


# ---------------------------------------------------------------------------
# Catalog


_PRODUCT_HEADERS = ("CODE", "NAME", "MERCHANT", "CUR", "VALUES", "DISCOUNT", "ACTIVE")


def product_values(product: Product) -> str:
    """Denominations when fixed, otherwise the allowed range."""
    if product.denominations:
        return ", ".join(money_str(value, product.currency) for value in product.denominations)
    low = money_str(product.min_value, product.currency) if product.min_value is not None else "?"
    high = money_str(product.max_value, product.currency) if product.max_value is not None else "?"
    return f"{low}–{high}"


def _product_row(product: Product) -> tuple[str, ...]:
    return (
        product.product_code,
        product.name,
        product.merchant,
        product.currency,
        product_values(product),
        f"{product.discount.normalize():f}%",
        "yes" if product.is_active else "no",
    )


def _product_json(product: Product) -> dict[str, Any]:
    return {
        "productCode": product.product_code,
        "name": product.name,
        "merchant": product.merchant,
        "currency": product.currency,
        "countries": list(product.countries),
        "category": product.category,
        "minValue": _decimal_text(product.min_value),
        "maxValue": _decimal_text(product.max_value),
        "denominations": [_decimal_text(value) for value in product.denominations],
        "discount": _decimal_text(product.discount),
        "isActive": product.is_active,
    }


# ---------------------------------------------------------------------------
# Wallet


def _print_balances(balances: Sequence[Balance], *, as_json: bool) -> None:
    if as_json:
        wallets = [
            {
                "currency": balance.currency,
                "balance": money_str(balance.balance, balance.currency),
                "available": money_str(balance.available, balance.currency),
            }
            for balance in balances
        ]
        echo_json({"wallets": wallets}, "batcher.wallet/1")
        return
    if not balances:
        echo("No wallets.", err=True)
        return
    rows = [
        (
            balance.currency,
            money_str(balance.balance, balance.currency),
            money_str(balance.available, balance.currency),
        )
        for balance in balances
    ]
    echo(render_table(("CURRENCY", "BALANCE", "AVAILABLE"), rows, right_align={1, 2}))


def _print_transactions(transactions: Sequence[WalletTransaction], *, as_json: bool) -> None:
    if as_json:
        echo_json(
            {"transactions": [_transaction_json(t) for t in transactions]},
            "batcher.transactions/1",
        )
        return
    if not transactions:
        echo("No transactions.", err=True)
        return
    rows = [
        (
            transaction.timestamp.isoformat(timespec="seconds") if transaction.timestamp else "",
            transaction.transaction_type,
            money_str(transaction.amount, transaction.currency),
            transaction.currency,
            transaction.order_id or "",
            transaction.description,
        )
        for transaction in transactions
    ]
    headers = ("TIME", "TYPE", "AMOUNT", "CUR", "ORDER", "DESCRIPTION")
    echo(render_table(headers, rows, right_align={2}))


def _transaction_json(transaction: WalletTransaction) -> dict[str, Any]:
    return {
        "timestamp": transaction.timestamp.isoformat() if transaction.timestamp else None,
        "type": transaction.transaction_type,
        "amount": money_str(transaction.amount, transaction.currency),
        "currency": transaction.currency,
        "orderId": transaction.order_id,
        "transactionId": transaction.transaction_id,
        "description": transaction.description,
    }


# ---------------------------------------------------------------------------
# Output helpers


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right_align: set[int] | None = None
) -> str:
    """Columns padded to their widest cell; numbers right-aligned so decimals line up."""
    right = right_align or set()
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def _decimal_text(value: Decimal | None) -> str | None:
    """Exact decimal text for JSON output: money never becomes a float."""
    return None if value is None else f"{value:f}"
