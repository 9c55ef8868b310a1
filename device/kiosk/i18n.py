"""Kiosk page texts in English and Arabic (right-to-left), and localised report fields.

Class names and advice come from :mod:`device.report` in English; Arabic versions are keyed by label
here. A label with no Arabic text (a new model class) falls back to its English name and the generic advice.
"""

from __future__ import annotations

from device import report
from device.preprocess import QualityIssue

LOCALES = ("en", "ar")
DIRECTION = {"en": "ltr", "ar": "rtl"}

STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "title": "SkinScan kiosk",
        "disclaimer": report.DISCLAIMER,
        "live": "Live view",
        "capture": "Capture",
        "upload": "Use a photo",
        "retake": "Retake",
        "analyse": "Analyse this area",
        "auto_crop": "Automatic crop",
        "crop_hint": "Drag on the photo to mark the affected area.",
        "analysing": "Analysing…",
        "most_likely": "Most likely",
        "class": "Class",
        "probability": "Probability",
        "urgency": "Urgency",
        "advice": "Advice",
        "urgency_soon": "See a dermatologist soon",
        "urgency_routine": "Routine",
        "urgency_unsure": "Unsure: retake or see a doctor",
        "unsure": "Unsure",
        "quality": "Photo quality",
        "quality_ok": "good",
        "retake_advised": "Retake recommended",
        "print": "Print report",
        "send": "Send to a doctor",
        "sending": "Sending…",
        "not_connected": "Not connected to the cloud service. The report on this screen is still valid offline.",
        "upload_state": "Upload",
        "state_not_sent": "not sent",
        "state_queued": "waiting to upload (kept on this kiosk)",
        "state_sent": "sent, waiting for a doctor",
        "state_answered": "a doctor has answered",
        "state_unknown": "unknown",
        "state_offline": "not connected to the cloud service",
        "state_failed": "sending failed",
        "cloud_result": "Cloud model",
        "feedback": "Doctor's feedback",
        "urgent": "Urgent",
        "pair": "Scan to follow this case on your phone",
        "camera": "Camera",
        "model": "Model",
        "model_missing": "model not loaded",
        "cloud": "Cloud",
        "connected": "connected",
        "offline": "offline",
        "language": "العربية",
        "ms": "ms",
        "report_title": "SkinScan screening report",
        "device": "Kiosk",
        "taken": "Taken",
        "model_version": "Model version",
        "crop": "Analysed area",
        "back": "Back",
        "no_frame": "No camera picture to capture",
        "update_installed": "updated to",
        "update_unchanged": "up to date",
        "update_rejected": "update refused",
        "update_failed": "update not downloaded, will retry",
        "rollback": "rolled back",
    },
    "ar": {
        "title": "جهاز SkinScan",
        "disclaimer": "أداة فحص مساعدة، وليست تشخيصًا.",
        "live": "العرض المباشر",
        "capture": "التقاط",
        "upload": "استخدام صورة",
        "retake": "إعادة التصوير",
        "analyse": "تحليل هذه المنطقة",
        "auto_crop": "قص تلقائي",
        "crop_hint": "اسحب على الصورة لتحديد المنطقة المصابة.",
        "analysing": "جارٍ التحليل…",
        "most_likely": "الاحتمالات الأعلى",
        "class": "الفئة",
        "probability": "الاحتمال",
        "urgency": "الأولوية",
        "advice": "النصيحة",
        "urgency_soon": "راجع طبيب جلدية قريبًا",
        "urgency_routine": "غير عاجل",
        "urgency_unsure": "غير متأكد: أعد التصوير أو راجع طبيبًا",
        "unsure": "غير متأكد",
        "quality": "جودة الصورة",
        "quality_ok": "جيدة",
        "retake_advised": "يُنصح بإعادة التصوير",
        "print": "طباعة التقرير",
        "send": "إرسال إلى طبيب",
        "sending": "جارٍ الإرسال…",
        "not_connected": "غير متصل بالخدمة السحابية. التقرير المعروض على هذه الشاشة صالح دون اتصال.",
        "upload_state": "الرفع",
        "state_not_sent": "لم يُرسل",
        "state_queued": "بانتظار الرفع (محفوظ على هذا الجهاز)",
        "state_sent": "أُرسل، بانتظار الطبيب",
        "state_answered": "ردّ الطبيب",
        "state_unknown": "غير معروفة",
        "state_offline": "غير متصل بالخدمة السحابية",
        "state_failed": "فشل الإرسال",
        "cloud_result": "نموذج السحابة",
        "feedback": "ملاحظات الطبيب",
        "urgent": "عاجل",
        "pair": "امسح الرمز لمتابعة هذه الحالة على هاتفك",
        "camera": "الكاميرا",
        "model": "النموذج",
        "model_missing": "النموذج غير محمّل",
        "cloud": "السحابة",
        "connected": "متصل",
        "offline": "غير متصل",
        "language": "English",
        "ms": "ملّي ثانية",
        "report_title": "تقرير فحص SkinScan",
        "device": "الجهاز",
        "taken": "وقت الالتقاط",
        "model_version": "إصدار النموذج",
        "crop": "المنطقة المحللة",
        "back": "رجوع",
        "no_frame": "لا توجد صورة من الكاميرا لالتقاطها",
        "update_installed": "تم التحديث إلى",
        "update_unchanged": "محدّث",
        "update_rejected": "تم رفض التحديث",
        "update_failed": "لم يُنزَّل التحديث، ستتم المحاولة لاحقًا",
        "rollback": "تمت العودة إلى نسخة سابقة",
    },
}

_NAMES_AR = {
    "melanoma": "ميلانوما (ورم ميلانيني)",
    "basal_cell_carcinoma": "سرطان الخلايا القاعدية",
    "actinic_keratosis": "تقرّن سفعي",
    "benign_keratosis": "تقرّن حميد",
    "nevus": "شامة (وحمة)",
    "dermatofibroma": "ورم ليفي جلدي",
    "vascular_lesion": "آفة وعائية",
    "acne": "حبّ الشباب",
    "eczema": "إكزيما",
}
_SOON_AR = "راجع طبيب جلدية قريبًا."
_ADVICE_AR = {
    "melanoma": _SOON_AR + " الميلانوما قابلة للعلاج عند اكتشافها مبكرًا.",
    "basal_cell_carcinoma": _SOON_AR,
    "actinic_keratosis": _SOON_AR + " قد يتطور إلى سرطان جلد.",
    "benign_keratosis": "غالبًا غير ضار. راجع طبيبًا إذا كبر أو نزف أو تغيّر.",
    "nevus": "غالبًا غير ضارة. راقب أي تغيّر في الحجم أو الشكل أو اللون، وراجع طبيبًا إن حدث.",
    "dermatofibroma": "غالبًا غير ضار. راجع طبيبًا إذا آلمك أو تغيّر.",
    "vascular_lesion": "غالبًا غير ضارة. راجع طبيبًا إذا نزفت أو كبرت.",
    "acne": "نظّف البشرة بلطف، وراجع طبيبًا أو صيدليًا إذا كان شديدًا أو يترك ندبات.",
    "eczema": "رطّب البشرة وتجنّب المهيّجات، وراجع طبيبًا إذا انتشرت أو التهبت.",
}
_DEFAULT_ADVICE_AR = "راجع طبيبًا إذا كنت قلقًا أو إذا تغيّر."
_UNSURE_AR = "غير متأكد: أعد التصوير أو راجع طبيبًا."
_QUALITY_AR = {
    "blur": "أعد التصوير: الصورة غير واضحة (الدرجة {value:.0f}، المطلوب {needed})",
    "dark": "أعد التصوير: الصورة مظلمة (السطوع {value:.0f}، المطلوب {needed})",
    "bright": "أعد التصوير: الصورة ساطعة جدًا (السطوع {value:.0f}، المطلوب {needed})",
    "clipped": "أعد التصوير: نسبة كبيرة من البكسلات مشبعة ({value:.0%}، المطلوب {needed})",
    "small": "اقترب أكثر: الآفة تشغل {value:.1%} من الصورة (المطلوب {needed})",
    "cut_off": "قد تكون الآفة مقطوعة: وسّع منطقة القص",
}


def locale_of(value: str | None, default: str) -> str:
    return value if value in LOCALES else default


def strings(locale: str) -> dict[str, str]:
    return STRINGS[locale]


def class_name(label: str, locale: str) -> str:
    if locale == "ar" and label in _NAMES_AR:
        return _NAMES_AR[label]
    return report.describe(label)[0]


def urgency_of(label: str, dangerous: list[str]) -> str:
    return "soon" if label in dangerous else report.describe(label)[1]


def advice(label: str, urgency: str, locale: str) -> str:
    if urgency == "unsure":
        return _UNSURE_AR if locale == "ar" else report.UNSURE_ADVICE
    if locale == "ar":
        return _ADVICE_AR.get(label, _SOON_AR if urgency == "soon" else _DEFAULT_ADVICE_AR)
    text = report.describe(label)[2]
    if urgency == "soon" and not text.startswith(report.SEE_DOCTOR_SOON):
        text = f"{report.SEE_DOCTOR_SOON} {text}"
    return text


def quality_message(issue: QualityIssue, locale: str) -> str:
    if locale == "ar" and issue.code in _QUALITY_AR:
        return _QUALITY_AR[issue.code].format(value=issue.value, needed=issue.needed)
    return issue.message
