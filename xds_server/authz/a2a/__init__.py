"""The policy service's A2A handler: requests read strictly, task and context ids sealed per caller,
cards rewritten per caller (handler.py; where ids are: ids.py; cards: cards.py; one request's
exchange: exchange.py)."""
