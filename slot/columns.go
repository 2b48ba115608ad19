package slot

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/decoder"
)

// Column is a column of the outbox table, as the catalog describes it.
type Column struct {
	// Name is the column's name, raw.
	Name string
	// Generated is set for a generated column: logical replication does
	// not send those, so the relay never sees their values.
	Generated bool
}

// TableColumns returns the outbox table's columns in table order, dropped
// ones left out. The table named by cfg is read: for a partitioned table
// that is the root, whose name its rows are published under (and whose
// columns every partition has).
func TableColumns(ctx context.Context, conn *pgx.Conn, cfg Config) ([]Column, error) {
	if _, err := checkTable(ctx, conn, cfg); err != nil {
		return nil, err
	}
	schema, name, _ := cfg.table()
	rows, _ := conn.Query(ctx, `
select a.attname::text, a.attgenerated <> ''
from pg_attribute a
join pg_class c on c.oid = a.attrelid
join pg_namespace n on n.oid = c.relnamespace
where n.nspname = $1 and c.relname = $2 and a.attnum > 0 and not a.attisdropped
order by a.attnum`, schema, name)
	cols, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Column])
	if err != nil {
		return nil, fmt.Errorf("reading the columns of table %s.%s: %w", schema, name, err)
	}
	return cols, nil
}

// CheckColumns checks that the outbox table has every column in need
// (decoder.Config.NeededColumns), so a mismatch stops the relay at start
// with a *Problem naming the column and the flag that fixes it, instead of
// at the first row.
func CheckColumns(ctx context.Context, conn *pgx.Conn, cfg Config, need []decoder.NeededColumn) error {
	cols, err := TableColumns(ctx, conn, cfg)
	if err != nil {
		return err
	}
	generated := make(map[string]bool, len(cols))
	for _, c := range cols {
		generated[c.Name] = c.Generated
	}
	var missing []decoder.NeededColumn
	for _, n := range need {
		if gen, ok := generated[n.Name]; !ok || gen {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	schema, name, _ := cfg.table()
	first := missing[0]
	what := fmt.Sprintf("column %s (%s) is missing from table %s.%s", first.Name, columnUse(first), schema, name)
	if generated[first.Name] {
		what = fmt.Sprintf("column %s (%s) of table %s.%s is a generated column, whose values logical replication does not send", first.Name, columnUse(first), schema, name)
	}
	if len(missing) > 1 {
		var also []string
		for _, m := range missing[1:] {
			also = append(also, m.Name)
		}
		what += " (also missing: " + strings.Join(also, ", ") + ")"
	}
	return &Problem{What: what, Fix: columnFix(first)}
}

// columnUse says why the relay needs the column, in flag terms.
func columnUse(n decoder.NeededColumn) string {
	switch {
	case n.Role == decoder.RoleTopic:
		return "a placeholder of --topic"
	case n.Role == decoder.RoleHeader:
		return "listed in --header-columns"
	case n.Default:
		return "mapped by default as the " + n.Logical + " column"
	default:
		return "mapped as the " + n.Logical + " column"
	}
}

// columnFix says how to make the table and the flags agree.
func columnFix(n decoder.NeededColumn) string {
	switch {
	case n.Role == decoder.RoleTopic:
		return "add it, or change --topic"
	case n.Role == decoder.RoleHeader:
		return "add it, or remove it from --header-columns"
	case n.Optional:
		return fmt.Sprintf("add it, or map none with --columns %s=", n.Logical)
	default:
		return fmt.Sprintf("add it, or map %s to a column the table has with --columns %s=<column>", n.Logical, n.Logical)
	}
}
