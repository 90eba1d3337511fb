package tasks

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/couponq/couponq/wechatpay"
	"github.com/hibiken/asynq"
)

// TestNotBeforeSchedulesTheTask: a change's not_before is in its payload
// and makes its asynq task scheduled for then; one without stays pending.
func TestNotBeforeSchedulesTheTask(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	nb := time.Now().Add(time.Hour).Truncate(time.Second)
	later := deactivateChange("orn_sched_1")
	later.NotBefore = nb.Format(time.RFC3339)
	now := getChange("orn_sched_2")
	if _, err := b.p.EnqueueBatch(ctx, Changes([]Change{later, now}), BatchOptions{ID: "sched", AllOrNothing: true}); err != nil {
		t.Fatal(err)
	}
	info, err := b.inspector.GetTaskInfo(DefaultQueue, later.TaskID())
	if err != nil || info.State != asynq.TaskStateScheduled || !info.NextProcessAt.Equal(nb) {
		t.Errorf("scheduled task = %+v, %v; want scheduled at %v", info, err, nb)
	}
	if !strings.Contains(string(info.Payload), `"not_before":"`+later.NotBefore+`"`) {
		t.Errorf("payload %s lacks not_before", info.Payload)
	}
	if info, err := b.inspector.GetTaskInfo(DefaultQueue, now.TaskID()); err != nil || info.State != asynq.TaskStatePending {
		t.Errorf("unscheduled task = %+v, %v", info, err)
	}
	res, err := b.reader.Result(ctx, later.TaskID())
	if err != nil || res.Status != StatusQueued {
		t.Fatalf("result = %+v, %v", res, err)
	}
	if c, err := res.Change(); err != nil || c.NotBefore != later.NotBefore {
		t.Errorf("change from the result = %+v, %v", c, err)
	}
	// The worker's repair enqueues from the result: scheduled again.
	if err := b.inspector.DeleteTask(DefaultQueue, later.TaskID()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.p.enq.ensure(ctx, b.p.batchStore, "", []string{later.TaskID()}); err != nil {
		t.Fatal(err)
	}
	if info, err := b.inspector.GetTaskInfo(DefaultQueue, later.TaskID()); err != nil || info.State != asynq.TaskStateScheduled {
		t.Errorf("re-enqueued task = %+v, %v", info, err)
	}
}

func TestNotBeforeValidation(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, value string
		ok          bool
	}{
		{"zone offset", "2025-01-01T10:00:00+08:00", true},
		{"UTC", "2025-01-01T02:00:00Z", true},
		{"fractional seconds", "2025-01-01T02:00:00.250Z", true},
		{"no zone", "2025-01-01T10:00:00", false},
		{"date only", "2025-01-01", false},
		{"words", "tomorrow", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, c := range []Change{updateChange("orn_nb_01"), deactivateChange("orn_nb_02"), getChange("orn_nb_03")} {
				c.NotBefore = tt.value
				err := c.Validate()
				var ve *wechatpay.ValidationError
				if tt.ok != (err == nil) || (err != nil && (!errors.As(err, &ve) || ve.Field != "not_before")) {
					t.Errorf("%s with not_before %q: %v", c.Op, tt.value, err)
				}
			}
		})
	}
	// A change file reports the bad line by number; CSV has the column.
	file := `{"op":"get","product_coupon_id":"1000000013","brand_id":"120344","not_before":"2025-01-01T10:00:00+08:00"}
{"op":"get","product_coupon_id":"1000000013","brand_id":"120344","not_before":"soon"}
`
	r := NewChangeReader(strings.NewReader(file), FormatJSONL)
	if c, err := r.Next(); err != nil || c.NotBefore != "2025-01-01T10:00:00+08:00" {
		t.Errorf("line 1 = %+v, %v", c, err)
	}
	var le *LineError
	if _, err := r.Next(); !errors.As(err, &le) || le.Line != 2 || !strings.Contains(err.Error(), "not_before") {
		t.Errorf("line 2: %v", err)
	}
	csvFile := "op,product_coupon_id,brand_id,not_before\nget,1000000013,120344,2025-01-01T02:00:00Z\n"
	if c, err := NewChangeReader(strings.NewReader(csvFile), FormatCSV).Next(); err != nil || c.NotBefore != "2025-01-01T02:00:00Z" {
		t.Errorf("csv = %+v, %v", c, err)
	}
}
