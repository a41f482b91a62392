"""Chinese comparison removal: a Chinese report section without its comparisons with prior studies,
every finding kept.  What `xraygpt.data.study_dataset.study_target` makes of a `zh` source's
`findings`, `impression` and `sections` when the sample shows no prior (or `keep_comparisons` is off).

Written here by hand: no library available offline takes comparison wording out of Chinese
radiology text, and the English rules (`xraygpt.data.prepare.rewrite`, `rules/rewrite.tsv`) match
English words.  The policy is theirs: what one image cannot support (a prior study, a change over
time) goes and the finding stays; a clause reporting a finding as gone goes; a clause or sentence
that states nothing once its comparison is out goes.

A section is cut into sentences at 。；;！？!? and line ends, a sentence into clauses at ，,：:.  A clause:
 1. goes whole when it is follow-up advice (建议/请 ... 复查/随访/对比), a negated new finding
    (未见新发病灶: it says nothing of what the prior showed), or a finding reported gone (已吸收,
    已消失, 完全/基本吸收, 吸收消失, 吸收/消失/消散 with no qualifier, 未再显示, 已拔除), as the English
    rules drop "has resolved" (one image cannot show what is no longer there, and nothing present
    is lost).  Partial resolution is not gone (部分/大部分/明显/较前吸收, 吸收好转, 吸收不全, 未吸收): the
    finding stays, the change goes.  消失 after 肋膈角, 心缘, 膈面, 轮廓, 纹理 ... is a finding (an
    obliterated angle) and stays;
 2. loses its comparison wording: a parenthesis holding any; 与/和/跟/同 + a prior (前片, 前次, 前老片,
    老片, 上次, a dated film "2019-03-01片") + 比较/相比/对比 and a verdict (相仿, 无明显变化 ...); 对比/比较
    + a prior; 较 + a prior; 较前 with the comparative after it (增大, 吸收好转, 大致相仿, 清晰 ...); 同前,
    如前; 无/未见(明显)变化, 变化不大; 新出现/新发/新见/新增 (not 新生物, 新鲜, 新冠, 新月); 复查; 仍; 原 before
    a side; a prior named anywhere (前片所示 ...); the always-comparative predicates (好转, 进展, 加重,
    减轻, 稳定, partial 吸收 ...);
 3. in a report that compares anywhere (this section, or `compared`), a change word ending the clause
    (增多, 增大, 缩小, 减少, 增宽 ...) is a change and goes, unless with the word before it it names
    a finding (`FINDING_TERMS`: 纹理增多, 心影增大, 肺门增大, 胸膜增厚, 体积缩小 ...): "心影较前增大" ->
    "心影增大", "右下肺结节较前增大" -> "右下肺结节"; so does 无/未见(明显)改变 ("no change"); a report
    that never compares keeps them all;
 4. changed by 1-3 and left naming only anatomy, attributes and function words (`states_nothing`:
    心影大小, 余, 双肺, 病变 with no place), it goes.  Normal statements name something (双肺未见明显异常,
    未见气胸) and stay.
A sentence with no clause left goes.  A section holding no change returns as written, to the byte;
a changed one has no empty clause or sentence, no leading or doubled punctuation, its list numbers
(1、 2. （3）) renumbered in order, and every sentence ends in 。 (or its own ！？).
"""

from __future__ import annotations

import re

_CJK = "\u4e00-\u9fff"
# ---------------------------------------------------------------------------------------------- the prior
_IMAGING = r"(?:胸部)?(?:正侧位|正位|侧位)?(?:胸片|平片|片子|片|DR片?|CR片?|CT|X线片?|检查|摄片|影像|图像)"
# a date: with its year, or a month and day followed by 日/号 or a film ("3-1片"; "3.5cm" is no date)
_DATE = (r"(?:\d{4}[-./年]\d{1,2}(?:[-./月]\d{1,2}[日号]?|月)?|\d{1,2}月\d{1,2}[日号]"
         rf"|\d{{1,2}}[-./]\d{{1,2}}(?=[日号]|的?{_IMAGING}))")
# a prior that no other reading shares ("前片" but not "前片状影"); named anywhere, it is a comparison
_PRIOR = r"(?:前老片|老片|旧片|前片(?![状影])|前(?:一)?次(?:" + _IMAGING + r")?|上(?:一)?次(?:" + _IMAGING + r")?)"
# after 与/较/对比 also: 上片, 既往片, a dated film, 前 alone before a comparison verb or verdict
_PRIOR_AFTER = (rf"(?:{_PRIOR}|(?:上|既往|原|外院|本院){_IMAGING}|{_DATE}(?:的)?(?:本院|外院)?(?:{_IMAGING})?)"
                r"\s*(?:[（(][^（）()]*[）)])?")
_COMPARE = r"(?:相比较|比较|相比|对比|相较|对照|比)"
_VERDICT = (r"(?:(?:大致|基本|大体|均|亦|也|仍)?(?:相仿|相似|相同|相当|类似|一致|近似|差不多|同)"
            r"|(?:无|未见|未|没有)(?:明显|显著|著|特殊|明确)?(?:变化|改变|差异|区别)|变化不(?:大|明显)"
            r"|(?:略|稍)有(?:变化|改变)|有所(?:变化|改变)|无著变)")
_BARE_PRIOR = rf"前(?=\s*(?:{_COMPARE}|{_VERDICT}|[，,：:；;。]|$))"
# ---------------------------------------------------------------------------------------------- change words
_DEGREE = (r"(?:明显|显著|稍许|稍微|稍|略微|略|轻度|轻微|更加|更|进一步|继续|有所|大部分|大部|部分|基本|大致|大体"
           r"|略有|稍有|逐渐|渐|已经|已|均|亦|也|又|相对|较)")
_ATTRIBUTE = r"(?:范围|大小|数量|数目|面积|程度|病灶|病变)"
# a change when the report compares; a finding after some words (FINDING_TERMS)
_CHANGE = (r"(?:增大|增多|增加|增宽|增厚|增浓|增高|增粗|增强|扩大|扩展|扩张|缩小|减少|减小|减低|降低|变小|变大|变淡"
           r"|变浓|变密实|变实|密实|变宽|变窄)")
# always a comparison (吸收 here is partial: a clause reporting a finding gone has been dropped before)
_ALWAYS = r"(?:吸收好转|好转|进展|加重|恶化|减轻|改善|稳定|吸收|消散|消退)(?:期|中)?"
_ALWAYS_PREDICATE = (rf"(?:(?:无|未见|未|尚未|没有)(?:明显|显著)?{_ALWAYS}"
                     rf"|(?:{_DEGREE})*{_ALWAYS}(?:不明显|欠佳|不佳|缓慢|不完全|不全)?)")
# what follows 较前: the comparative, to be removed with it
_COMPARATIVE = (rf"(?:{_CHANGE}|{_ALWAYS}|{_VERDICT}|无明显变化|清晰|清楚|模糊|明显|显著|浓密|浅淡|淡|局限|广泛"
                r"|抬高|上抬|下降|锐利|好|差|大|小|多|少|高|低|宽|窄|厚|薄|重|轻)")


def _predicate(words: str) -> str:
    """A pattern for a predicate of `words` with its degree and attribute words ("范围明显增大", "增多、增粗")."""
    return rf"(?:{_DEGREE})*(?:{_ATTRIBUTE})?(?:{_DEGREE})*{words}(?:[、和及]?(?:{_DEGREE})*{words})*"


# (nouns, change words): the change word names the finding ("纹理增多" is a finding, not an increase)
FINDING_TERMS: tuple[tuple[str, str], ...] = (
    ("纹理", "增多|增粗|增强|减少"),
    ("心影|心脏|心界|心腔|心胸比|心室|心房|左室|右室|左房|右房", "增大|扩大"),
    ("肺门|肺门影", "增大|增浓|增宽|扩大"),
    ("主动脉|主动脉弓|主动脉结|主动脉影|纵隔|纵隔影|肺动脉|肺动脉段|肺动脉干|静脉", "增宽|扩张|增粗|扩大"),
    ("肋间隙|间隙", "增宽|变窄"),
    ("透亮度|透光度|透过度", "增高|增加|增强|减低|降低"),
    ("密度", "增高"),
    ("骨质密度|骨密度", "减低|降低"),
    ("胸膜|管壁|支气管壁|壁", "增厚"),
    ("淋巴结", "增大|增多"),
    ("体积|容积", "缩小|减小|减少|增大"),
    ("肺血|血管影|血管", "增多|增粗|减少"),
)
_FINDING_TERMS = tuple((re.compile(rf"(?:{nouns})$"), re.compile(rf"(?:{words})")) for nouns, words in FINDING_TERMS)
# ---------------------------------------------------------------------------------------------- clause rules
_NEW = (r"(?:为|系|是)?(?:较前)?(?:新近?(?:出现|发现|发生|发|见|增|现|形成)|新近)的?"
        r"|新(?![生鲜型冠旧月近出发见增现形])的?(?=[" + _CJK + r"])")
_NEGATED_NEW = r"(?:未见|未发现|未|无|没有)(?:明显|明确|确切|其他|其它)?的?新(?![生鲜型冠旧月])"
_ADVICE = r"(?:建议|请|需|宜|必要时|注意)[^，,：:]*?(?:复查|随访|对比|比较|老片|前片|追踪|动态观察)"
_GONE_ALWAYS = (r"未再(?:显示|见|显影|出现|显现)|不再(?:显示|可见|显影)|已(?:经)?不(?:明显|显示|可见|显)"
                r"|已(?:经)?(?:拔除|撤除|取出|移除|去除|撤出|撤离|拆除)")
_GONE_WORD = re.compile("吸收|消失|消散|消退")
_PARTIAL_AFTER = re.compile("好转|期|中|后|不全|不完全|欠佳|不佳|不明显|缓慢")
_PARTIAL_BEFORE = re.compile("(?:大部分|大部|部分|明显|显著|有所|稍|略|逐渐|渐|进一步|较前|未见|尚未|未|无|不|继续|开始)$")
# 消失 after these names an obliterated outline, a finding ("右侧肋膈角消失")
_OUTLINE_BEFORE = re.compile("(?:肋膈角|膈角|膈面|心缘|边缘|轮廓|界面|界限|分界|间隙|纹理|结构|脂肪线)$")

# a prior with its comparison verb and verdict: removed before 较前 is read ("比较前片" holds 较前)
_PRIOR_PHRASES = tuple(re.compile(p) for p in (
    rf"(?:与|和|跟|同)\s*(?:{_PRIOR_AFTER}|{_BARE_PRIOR})\s*{_COMPARE}?\s*(?:{_VERDICT})?",
    rf"(?:对比|对照|比较|相比|相较)\s*于?\s*(?:{_PRIOR_AFTER}|前(?=\s*(?:[，,：:；;。]|$)))\s*(?:{_VERDICT})?",
    rf"较之?\s*{_PRIOR_AFTER}",
))
_REMOVALS = tuple(re.compile(p) for p in (
    _NEW,
    r"(?:大致|基本|大体|均|亦|也|仍)?(?:同前|如前)(?:片|所述)?",
    r"(?:无|未见|未|没有)(?:明显|显著|著|特殊|明确)?变化|变化不(?:大|明显)|(?:略|稍)有变化|有所变化|无著变",
    r"(?:随访)?复查(?:胸片|片)?(?:示|见|显示)?|(?:定期)?随访(?:观察)?",
    r"仍然|仍|依然|依旧",
    r"原有的?|原来的?|原(?=[左右双两])",
    rf"(?:于|在)?{_PRIOR}(?:上|中|内)?(?:所示|所见|显示|提示|示|见)?的?",
))
_COMPARED_ONLY = re.compile(r"(?:无|未见|未|没有)(?:明显|显著|著|特殊|明确)?改变")  # a change only where the report compares
_JIAO = re.compile(r"较前")
_AFTER_JIAO = re.compile(_predicate(_COMPARATIVE))
_ALWAYS_RE = re.compile(_ALWAYS_PREDICATE)
_TRAILING_CHANGE = re.compile(rf"{_predicate(_CHANGE)}了?$")
_TRAILING_ATTRIBUTE = re.compile(r"(?:范围|大小|数量|数目|面积|程度|密度|体积)$")
_CHANGE_WORD = re.compile(_CHANGE)
_PAREN = re.compile(r"[（(][^（）()]*[）)]")
_LEADING = re.compile(r"^(?:[\s，,、；;：:]|并且|并|且|但|而|则|的|及)+")
_TRAILING = re.compile(r"(?:[\s，,、；;：:]|的|了|为|系|是|呈|较|有所|已经|已|均|亦|也|且|并|及|和|与|伴)+$")

# Comparison wording: a section holding a match speaks of a prior study or a change (消失: see `mentions_comparison`).
ZH_COMPARISON = re.compile("|".join((
    r"较前", r"同前", r"如前", _PRIOR, r"复查", r"随访", _NEW, _NEGATED_NEW,
    rf"(?:与|和|跟|同|对比|对照|比较|相比|相较|较之?)\s*(?:{_PRIOR_AFTER}|{_BARE_PRIOR})",
    r"吸收|消散|消退|好转|进展|加重|恶化|减轻|改善|稳定|仍|依然|依旧",
    r"(?:无|未见|未|没有)(?:明显|显著|著|特殊|明确)?变化|变化不(?:大|明显)|无著变",
    _GONE_ALWAYS,
)))

# ---------------------------------------------------------------------------------------------- what states nothing
_FUNCTION = ("未见明显 未见 未 无 没有 可见 见 示 显示 提示 呈 为 是 系 有 存在 约 大致 基本 大体 明显 显著 稍 略 较 均 "
             "亦 也 尚 其 之 的 了 及 和 与 并 且 等 所见 所示 改变 变化 情况 表现 状态 本次 此次 目前 现在 现 经治疗后 "
             "经治疗 治疗后 治疗 抗炎后 抗炎 抗感染 余 其余 其他 其它 余部 以上 上述 前述 原有 原 部分 大部分 整体 "
             "总体 片 胸片 检查 影像 正位 侧位 正侧位 胸部 所 处 位于 相应 周围 范围 大小 形态 位置 程度 密度 数目 "
             "数量 面积 体积 边缘 轮廓 走行 分布 宽度 厚度 形状 透亮度 线").split()
_ANATOMY = ("心影 心脏 心缘 心膈角 心 肺门影 肺门 肺野 肺叶 肺 纹理 纵隔影 纵隔 膈肌 膈面 横膈 膈 肋膈角 胸廓 胸腔 "
            "胸壁 胸膜 骨质 骨骼 骨 主动脉弓 主动脉结 主动脉 气管 支气管 左 右 双侧 双 两侧 两 侧 上 中 下 叶 野 段 "
            "内 外 带 部 区 尖 底 基底 软组织 肋骨 肋 锁骨 肩胛骨 脊柱 胸椎 腋窝 颈部 腹部 肝 膈下").split()
_LESION = "病变 病灶 阴影 影 灶".split()
_WORDS = {word: kind for kind, words in (("function", _FUNCTION), ("anatomy", _ANATOMY), ("lesion", _LESION))
          for word in words}
_TOKEN = re.compile("|".join(sorted(map(re.escape, _WORDS), key=len, reverse=True)))
_SKIPPED = re.compile(r"[\sA-Za-z0-9.．%×*xX~～\-—/（）()、，,：:；;。！？!?]+")

_SENTENCE_END = re.compile(r"([。；;！？!?\n][。；;！？!?\s]*)")
_CLAUSE_END = re.compile(r"([，,：:])")
_NUMBER = re.compile(r"^\s*(?:(\d{1,2})([、.．）)])(?!\d)|([（(])(\d{1,2})([）)]))")


def mentions_comparison(text: str) -> bool:
    """Whether `text` holds Chinese comparison wording (`ZH_COMPARISON`, or 消失 of a finding)."""
    return bool(ZH_COMPARISON.search(text)) or any(
        m.group() == "消失" and not _OUTLINE_BEFORE.search(text[:m.start()]) for m in _GONE_WORD.finditer(text))


def states_nothing(clause: str) -> bool:
    """True when `clause` names only function words, attributes and anatomy, or a lesion with no place
    ("心影大小", "余", "双肺", "病变"); "右肺病变", "双肺未见明显异常" and any unknown word name something."""
    kinds = set()
    position = 0
    while position < len(clause):
        skipped = _SKIPPED.match(clause, position)
        if skipped:
            position = skipped.end()
            continue
        token = _TOKEN.match(clause, position)
        if not token:
            return False
        kinds.add(_WORDS[token.group()])
        position = token.end()
    return not {"anatomy", "lesion"} <= kinds


def _names_finding(subject: str, change: str) -> bool:
    """Whether `subject` + the change word `change` name a finding (`FINDING_TERMS`: "纹理" + "增多")."""
    return any(nouns.search(subject) and words.fullmatch(change) for nouns, words in _FINDING_TERMS)


def _reports_gone(clause: str) -> bool:
    """Whether `clause` reports a finding as gone (module docstring, rule 1)."""
    if re.search(_GONE_ALWAYS, clause):
        return True
    for m in _GONE_WORD.finditer(clause):
        before, after = clause[:m.start()], clause[m.end():]
        if _PARTIAL_AFTER.match(after) or _PARTIAL_BEFORE.search(before):
            continue
        if m.group() == "消失" and _OUTLINE_BEFORE.search(before):
            continue
        return True
    return False


def _without_jiao(clause: str) -> str:
    """`clause` without 较前 and the comparative after it; a change word that names a finding with the
    word before 较前 stays ("心影较前明显增大" -> "心影增大")."""
    while (m := _JIAO.search(clause)) is not None:
        subject, rest = clause[:m.start()], clause[m.end():]
        predicate = _AFTER_JIAO.match(rest)
        if not predicate:
            clause = subject + rest
            continue
        changes = _CHANGE_WORD.findall(predicate.group())
        kept = "、".join(changes) if changes and _names_finding(subject, changes[0]) else ""
        clause = subject + kept + rest[predicate.end():]
    return clause


def _without_trailing_change(clause: str) -> str:
    """`clause` without a change word ending it, unless it names a finding (module docstring, rule 3)."""
    m = _TRAILING_CHANGE.search(clause)
    if not m or not m.group():
        return clause
    subject = clause[:m.start()]
    change = _CHANGE_WORD.search(m.group())
    if change and _names_finding(subject, change.group()):
        return clause
    return _TRAILING_ATTRIBUTE.sub("", subject)


def _tidy(clause: str) -> str:
    previous = None
    while clause != previous:
        previous = clause
        clause = _TRAILING.sub("", _LEADING.sub("", clause.strip()))
    return clause


def _clean_clause(clause: str, compared: bool) -> str:
    """`clause` without comparison wording ("" when it goes); module docstring, rules 1-4."""
    if re.search(_ADVICE, clause) or re.search(_NEGATED_NEW, clause) or _reports_gone(clause):
        return ""
    text = _PAREN.sub(lambda m: "" if mentions_comparison(m.group()) else m.group(), clause)
    for pattern in _PRIOR_PHRASES:
        text = pattern.sub("", text)
    text = _without_jiao(text)
    for pattern in _REMOVALS:
        text = pattern.sub("", text)
    text = _ALWAYS_RE.sub("", text)
    if compared:
        text = _without_trailing_change(_COMPARED_ONLY.sub("", text))
    if text == clause:
        return clause
    text = _tidy(text)
    return "" if states_nothing(text) else text


def _clean_sentence(sentence: str, compared: bool) -> str:
    """`sentence` (no end mark) without comparison wording, clause by clause ("" when nothing is left)."""
    parts = _CLAUSE_END.split(sentence)
    kept: list[tuple[str, str]] = []
    for clause, mark in zip(parts[0::2], parts[1::2] + [""]):
        cleaned = _clean_clause(clause, compared)
        if cleaned.strip():
            kept.append((cleaned, mark))
    if not kept:
        return ""
    text = "".join(clause + mark for clause, mark in kept[:-1]) + kept[-1][0]
    return _tidy(text) if text != sentence else text


def _renumbered(sentences: list[str]) -> list[str]:
    """List numbers (1、 2. （3）) of `sentences` counted again from 1, each in its own style."""
    count, out = 0, []
    for sentence in sentences:
        m = _NUMBER.match(sentence)
        if m:
            count += 1
            number = f"{count}{m.group(2)}" if m.group(1) else f"{m.group(3)}{count}{m.group(5)}"
            sentence = number + sentence[m.end():]
        out.append(sentence)
    return out


def remove_zh_comparisons(text: str, compared: bool | None = None) -> str:
    """`text` (a Chinese report section) without comparison wording, every finding kept (module
    docstring); `compared`: whether the report compares (default: whether `text` does), which makes a
    change word ending a clause a change.  A text with nothing to remove is returned as written."""
    if compared is None:
        compared = mentions_comparison(text)
    parts = _SENTENCE_END.split(text)
    sentences: list[tuple[str, str]] = []
    changed = False
    for body, end in zip(parts[0::2], parts[1::2] + [""]):
        if not body.strip():
            continue
        number = _NUMBER.match(body)
        head, rest = (body[:number.end()], body[number.end():]) if number else ("", body)
        cleaned = _clean_sentence(rest, compared)
        changed = changed or cleaned != rest
        if cleaned:
            sentences.append((head.strip() + cleaned.strip(), end))
    if not changed:
        return text
    out = []
    for sentence, end in zip(_renumbered([s for s, _ in sentences]), [e for _, e in sentences]):
        mark = end.strip()[:1] if end.strip()[:1] in ("。", "！", "？", "!", "?") else "。"
        out.append(sentence + mark + ("\n" if "\n" in end else ""))
    return "".join(out).rstrip("\n") if not text.endswith("\n") else "".join(out)


def zh_sections_without_comparisons(findings: str, impression: str) -> tuple[str, str]:
    """(findings, impression) of a Chinese report without comparison wording; the report compares when
    either section does, so a change word in the other is read as a change too (module docstring)."""
    compared = mentions_comparison(f"{findings}\n{impression}")
    return (remove_zh_comparisons(findings, compared) if findings else "",
            remove_zh_comparisons(impression, compared) if impression else "")
