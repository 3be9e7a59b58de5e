"""Typed results of the Mirakl calls the flows use.

Each dataclass carries the fields the flows need plus ``raw`` (the API's own dict), and
is built with ``from_api`` which tolerates ``null`` or absence in any optional field:
real answers (and the spec's own examples) hold nulls the schema does not announce.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any


def parse_datetime(value: Any) -> datetime | None:
    """ISO 8601 (``Z``, offset, fractional seconds, or naive = UTC) to an aware datetime."""
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def to_decimal(value: Any) -> Decimal | None:
    """Money as Decimal (never float arithmetic on amounts); None when absent."""
    if value is None or value == "":
        return None
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


@dataclass
class Account:
    """A01: the shop behind the API key."""

    shop_id: int | None
    shop_name: str | None
    shop_state: str | None
    currency_iso_code: str | None
    is_professional: bool | None
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_api(cls, data: dict) -> "Account":
        return cls(
            shop_id=_int(data.get("shop_id")),
            shop_name=data.get("shop_name"),
            shop_state=data.get("shop_state"),
            currency_iso_code=data.get("currency_iso_code"),
            is_professional=data.get("is_professional"),
            raw=data,
        )


@dataclass
class Address:
    firstname: str | None
    lastname: str | None
    company: str | None
    street_1: str | None
    street_2: str | None
    zip_code: str | None
    city: str | None
    state: str | None
    country: str | None
    country_iso_code: str | None
    phone: str | None
    additional_info: str | None = None
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_api(cls, data: Any) -> "Address | None":
        if not isinstance(data, dict):
            return None
        return cls(
            firstname=data.get("firstname"),
            lastname=data.get("lastname"),
            company=data.get("company"),
            street_1=data.get("street_1"),
            street_2=data.get("street_2"),
            zip_code=data.get("zip_code"),
            city=data.get("city"),
            state=data.get("state"),
            country=data.get("country"),
            country_iso_code=data.get("country_iso_code"),
            phone=data.get("phone"),
            additional_info=data.get("additional_info"),
            raw=data,
        )


@dataclass
class Customer:
    """An order's customer; addresses are None until the customer is debited."""

    customer_id: str | None
    firstname: str | None
    lastname: str | None
    locale: str | None
    billing_address: Address | None
    shipping_address: Address | None
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_api(cls, data: Any) -> "Customer | None":
        if not isinstance(data, dict):
            return None
        return cls(
            customer_id=data.get("customer_id"),
            firstname=data.get("firstname"),
            lastname=data.get("lastname"),
            locale=data.get("locale"),
            billing_address=Address.from_api(data.get("billing_address")),
            shipping_address=Address.from_api(data.get("shipping_address")),
            raw=data,
        )


@dataclass
class LineRefund:
    """A refund already recorded on an order line (OR11 ``order_lines[].refunds``)."""

    id: str | None
    amount: Decimal | None
    shipping_amount: Decimal | None
    quantity: int | None
    reason_code: str | None
    state: str | None
    created_date: datetime | None
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_api(cls, data: dict) -> "LineRefund":
        return cls(
            id=None if data.get("id") is None else str(data.get("id")),
            amount=to_decimal(data.get("amount")),
            shipping_amount=to_decimal(data.get("shipping_amount")),
            quantity=_int(data.get("quantity")),
            reason_code=data.get("reason_code"),
            state=data.get("state") or data.get("refund_state"),
            created_date=parse_datetime(data.get("created_date")),
            raw=data,
        )


@dataclass
class OrderLine:
    order_line_id: str
    order_line_state: str | None
    offer_sku: str | None
    product_sku: str | None
    product_title: str | None
    quantity: int
    price: Decimal | None
    total_price: Decimal | None
    shipping_price: Decimal | None
    commission_fee: Decimal | None
    refunds: list[LineRefund]
    cancelations: list[dict]
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_api(cls, data: dict) -> "OrderLine":
        return cls(
            order_line_id=str(data.get("order_line_id")),
            order_line_state=data.get("order_line_state"),
            offer_sku=data.get("offer_sku"),
            product_sku=data.get("product_sku"),
            product_title=data.get("product_title"),
            quantity=_int(data.get("quantity")) or 0,
            price=to_decimal(data.get("price")),
            total_price=to_decimal(data.get("total_price")),
            shipping_price=to_decimal(data.get("shipping_price")),
            commission_fee=to_decimal(data.get("commission_fee")),
            refunds=[LineRefund.from_api(r) for r in _list(data.get("refunds")) if isinstance(r, dict)],
            cancelations=[c for c in _list(data.get("cancelations")) if isinstance(c, dict)],
            raw=data,
        )


@dataclass
class Order:
    """OR11 / OR12: one marketplace order."""

    order_id: str
    order_state: str | None
    commercial_id: str | None
    created_date: datetime | None
    last_updated_date: datetime | None
    acceptance_decision_date: datetime | None
    shipping_deadline: datetime | None
    currency_iso_code: str | None
    price: Decimal | None
    shipping_price: Decimal | None
    total_price: Decimal | None
    total_commission: Decimal | None
    customer: Customer | None
    order_lines: list[OrderLine]
    has_customer_message: bool
    customer_notification_email: str | None
    can_cancel: bool
    shipping_carrier_code: str | None
    shipping_tracking: str | None
    shipping_type_code: str | None
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_api(cls, data: dict) -> "Order":
        return cls(
            order_id=str(data.get("order_id")),
            order_state=data.get("order_state"),
            commercial_id=data.get("commercial_id"),
            created_date=parse_datetime(data.get("created_date")),
            last_updated_date=parse_datetime(data.get("last_updated_date")),
            acceptance_decision_date=parse_datetime(data.get("acceptance_decision_date")),
            shipping_deadline=parse_datetime(data.get("shipping_deadline")),
            currency_iso_code=data.get("currency_iso_code"),
            price=to_decimal(data.get("price")),
            shipping_price=to_decimal(data.get("shipping_price")),
            total_price=to_decimal(data.get("total_price")),
            total_commission=to_decimal(data.get("total_commission")),
            customer=Customer.from_api(data.get("customer")),
            order_lines=[OrderLine.from_api(line) for line in _list(data.get("order_lines")) if isinstance(line, dict)],
            has_customer_message=bool(data.get("has_customer_message")),
            customer_notification_email=data.get("customer_notification_email"),
            can_cancel=bool(data.get("can_cancel")),
            shipping_carrier_code=data.get("shipping_carrier_code"),
            shipping_tracking=data.get("shipping_tracking"),
            shipping_type_code=data.get("shipping_type_code"),
            raw=data,
        )

    def line(self, order_line_id: str) -> OrderLine:
        for line in self.order_lines:
            if line.order_line_id == order_line_id:
                return line
        raise KeyError(f"order {self.order_id} has no line {order_line_id!r}")


@dataclass
class RefundLine:
    """One line of an OR28 refund request."""

    order_line_id: str
    amount: Decimal
    reason_code: str
    shipping_amount: Decimal = Decimal("0")
    quantity: int | None = None
    currency_iso_code: str | None = None
    taxes: list[dict] = field(default_factory=list)
    shipping_taxes: list[dict] = field(default_factory=list)

    def to_api(self) -> dict:
        body: dict[str, Any] = {
            "order_line_id": self.order_line_id,
            "amount": float(self.amount),
            "reason_code": self.reason_code,
            "shipping_amount": float(self.shipping_amount),
        }
        if self.quantity is not None:
            body["quantity"] = self.quantity
        if self.currency_iso_code:
            body["currency_iso_code"] = self.currency_iso_code
        if self.taxes:
            body["taxes"] = self.taxes
        if self.shipping_taxes:
            body["shipping_taxes"] = self.shipping_taxes
        return body


@dataclass
class RefundResult:
    """OR28 answer for one refunded line."""

    refund_id: str | None
    order_refund_id: str | None
    order_line_id: str | None
    amount: Decimal | None
    shipping_amount: Decimal | None
    quantity: int | None
    reason_code: str | None
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_api(cls, data: dict) -> "RefundResult":
        return cls(
            refund_id=None if data.get("refund_id") is None else str(data.get("refund_id")),
            order_refund_id=data.get("order_refund_id"),
            order_line_id=data.get("order_line_id"),
            amount=to_decimal(data.get("amount")),
            shipping_amount=to_decimal(data.get("shipping_amount")),
            quantity=_int(data.get("quantity")),
            reason_code=data.get("reason_code"),
            raw=data,
        )


@dataclass
class Offer:
    """OF21: one of the shop's offers."""

    offer_id: int | None
    shop_sku: str | None
    product_sku: str | None
    quantity: int | None
    price: Decimal | None
    total_price: Decimal | None
    state_code: str | None
    active: bool | None
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_api(cls, data: dict) -> "Offer":
        return cls(
            offer_id=_int(data.get("offer_id")),
            shop_sku=data.get("shop_sku"),
            product_sku=data.get("product_sku"),
            quantity=_int(data.get("quantity")),
            price=to_decimal(data.get("price")),
            total_price=to_decimal(data.get("total_price")),
            state_code=data.get("state_code"),
            active=data.get("active"),
            raw=data,
        )


@dataclass
class ImportStatus:
    """STO02 / PRI02 / OF24-follow-up: where an import stands."""

    import_id: str
    status: str | None
    lines_in_success: int | None
    lines_in_error: int | None
    has_error_report: bool
    date_created: datetime | None
    reason_status: str | None = None
    raw: dict = field(repr=False, default_factory=dict)

    FINAL_STATUSES = frozenset({"COMPLETE", "FAILED", "CANCELLED", "REJECTED"})

    @classmethod
    def from_api(cls, data: dict) -> "ImportStatus":
        return cls(
            import_id=str(data.get("import_id")),
            status=data.get("status"),
            lines_in_success=_int(data.get("lines_in_success")),
            lines_in_error=_int(data.get("lines_in_error")),
            has_error_report=bool(data.get("has_error_report")),
            date_created=parse_datetime(data.get("date_created")),
            reason_status=data.get("reason_status"),
            raw=data,
        )

    @property
    def finished(self) -> bool:
        return (self.status or "").upper() in self.FINAL_STATUSES


@dataclass
class ErrorReportLine:
    """One line of a STO03 / PRI03 CSV error report: the rejected row and why."""

    line_number: int | None
    error: str
    values: dict[str, str]

    @property
    def offer_sku(self) -> str | None:
        return self.values.get("offer-sku") or self.values.get("sku")


def parse_error_report(text: str) -> list[ErrorReportLine]:
    """Parse a Mirakl error report: ``;``-separated, first column line number, second the error.

    The header names the columns; the first two are the line number and error reason
    whatever their header says (the spec only describes them by position).
    """
    text = text.lstrip("\ufeff")
    if not text.strip():
        return []
    rows = list(csv.reader(io.StringIO(text), delimiter=";"))
    header, body = rows[0], rows[1:]
    out = []
    for row in body:
        if not any(cell.strip() for cell in row):
            continue
        padded = row + [""] * (len(header) - len(row))
        out.append(
            ErrorReportLine(
                line_number=_int(padded[0]),
                error=padded[1] if len(padded) > 1 else "",
                values={name: value for name, value in zip(header[2:], padded[2:])},
            )
        )
    return out


def parse_csv_report(text: str) -> list[dict[str, str]]:
    """A ``;``-separated report with a header line (OF03, P44, P45) as rows keyed by column name."""
    text = text.lstrip("\ufeff")
    if not text.strip():
        return []
    return [row for row in csv.DictReader(io.StringIO(text), delimiter=";")
            if any((value or "").strip() for value in row.values())]


def parse_offer_error_report(text: str) -> list[ErrorReportLine]:
    """OF03: the refused offer lines; unlike STO03/PRI03 the reason comes last (``error-message``)."""
    out = []
    for row in parse_csv_report(text):
        values = {k: v for k, v in row.items() if k not in ("error-line", "error-message") and k is not None}
        out.append(ErrorReportLine(line_number=_int(row.get("error-line")), error=row.get("error-message") or "",
                                   values=values))
    return out


@dataclass
class ProductImportStatus:
    """P42: where a product import (P41) stands; reports exist once it is COMPLETE."""

    import_id: str
    status: str | None
    has_error_report: bool
    has_new_product_report: bool
    reason_status: str | None = None
    raw: dict = field(repr=False, default_factory=dict)

    FINAL_STATUSES = frozenset({"COMPLETE", "FAILED", "CANCELLED", "TRANSFORMATION_FAILED"})

    @classmethod
    def from_api(cls, data: dict) -> "ProductImportStatus":
        return cls(
            import_id=str(data.get("import_id")),
            status=data.get("import_status"),
            has_error_report=bool(data.get("has_error_report")),
            has_new_product_report=bool(data.get("has_new_product_report")),
            reason_status=data.get("reason_status"),
            raw=data,
        )

    @property
    def finished(self) -> bool:
        return (self.status or "").upper() in self.FINAL_STATUSES


@dataclass
class Carrier:
    """SH21: a carrier the operator accepts in OR23."""

    code: str
    label: str | None
    standard_code: str | None
    tracking_url: str | None
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_api(cls, data: dict) -> "Carrier":
        return cls(
            code=str(data.get("code")),
            label=data.get("label"),
            standard_code=data.get("standard_code"),
            tracking_url=data.get("tracking_url"),
            raw=data,
        )


@dataclass
class Transaction:
    """TL02: one transaction line (commission, order amount, refund, subscription...)."""

    id: str
    type: str | None
    amount: Decimal | None
    amount_credited: Decimal | None
    amount_debited: Decimal | None
    currency_iso_code: str | None
    payment_state: str | None
    seller_billing_cycle_id: str | None
    accounting_document_id: str | None
    accounting_document_number: str | None
    date_created: datetime | None
    last_updated: datetime | None
    order_id: str | None
    order_line_id: str | None
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_api(cls, data: dict) -> "Transaction":
        entities = _dict(data.get("entities"))
        return cls(
            id=str(data.get("id")),
            type=data.get("type"),
            amount=to_decimal(data.get("amount")),
            amount_credited=to_decimal(data.get("amount_credited")),
            amount_debited=to_decimal(data.get("amount_debited")),
            currency_iso_code=data.get("currency_iso_code"),
            payment_state=data.get("payment_state"),
            seller_billing_cycle_id=data.get("seller_billing_cycle_id"),
            accounting_document_id=data.get("accounting_document_id"),
            accounting_document_number=data.get("accounting_document_number"),
            date_created=parse_datetime(data.get("date_created")),
            last_updated=parse_datetime(data.get("last_updated")),
            order_id=_dict(entities.get("order")).get("id"),
            order_line_id=_dict(entities.get("order_line")).get("id"),
            raw=data,
        )


@dataclass
class AccountingDocument:
    """IV01: an invoice or credit note of a billing cycle."""

    id: str | None
    invoice_id: int | None
    type: str | None
    state: str | None
    currency_iso_code: str | None
    date_created: datetime | None
    issue_date: datetime | None
    due_date: datetime | None
    total_amount_excl_taxes: Decimal | None
    total_amount_incl_taxes: Decimal | None
    total_charged_amount: Decimal | None
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_api(cls, data: dict) -> "AccountingDocument":
        return cls(
            id=None if data.get("id") is None else str(data.get("id")),
            invoice_id=_int(data.get("invoice_id")),
            type=data.get("type"),
            state=data.get("state"),
            currency_iso_code=data.get("currency_iso_code"),
            date_created=parse_datetime(data.get("date_created")),
            issue_date=parse_datetime(data.get("issue_date")),
            due_date=parse_datetime(data.get("due_date")),
            total_amount_excl_taxes=to_decimal(data.get("total_amount_excl_taxes")),
            total_amount_incl_taxes=to_decimal(data.get("total_amount_incl_taxes")),
            total_charged_amount=to_decimal(data.get("total_charged_amount")),
            raw=data,
        )


@dataclass
class MessageThread:
    """M11: a message thread (e.g. a customer's message on an order)."""

    id: str
    topic: str | None
    date_updated: datetime | None
    entities: list[dict]
    messages: list[dict]
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_api(cls, data: dict) -> "MessageThread":
        topic = data.get("topic")
        return cls(
            id=str(data.get("id")),
            topic=topic.get("value") if isinstance(topic, dict) else topic,
            date_updated=parse_datetime(data.get("date_updated")),
            entities=[e for e in _list(data.get("entities")) if isinstance(e, dict)],
            messages=[m for m in _list(data.get("messages")) if isinstance(m, dict)],
            raw=data,
        )


@dataclass
class ExportStatus:
    """TL04 / OF53: where an asynchronous export stands; ``urls`` of its chunks once COMPLETED."""

    status: str | None
    urls: list[str]
    last_updated: datetime | None
    error: str | None = None
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_api(cls, data: dict) -> "ExportStatus":
        error = data.get("error")
        if isinstance(error, dict):
            error = " ".join(str(error.get(k)) for k in ("code", "detail") if error.get(k))
        return cls(
            status=(data.get("status") or None),
            urls=[str(u) for u in data.get("urls") or [] if u],
            last_updated=parse_datetime(data.get("last_updated")),
            error=str(error) if error else None,
            raw=data,
        )

    @property
    def completed(self) -> bool:
        return (self.status or "").upper() == "COMPLETED"

    @property
    def failed(self) -> bool:
        return (self.status or "").upper() in ("FAILED", "CANCELED", "CANCELLED")
