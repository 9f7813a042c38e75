"""What every edge of Depot shares: settings, database, entities, errors."""
